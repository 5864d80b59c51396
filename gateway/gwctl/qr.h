/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_QR_H
#define GW_QR_H

#include <stdio.h>

/*
 * Draws text as a QR code (libqrencode, error correction M) with Unicode half blocks, two
 * module rows per line, black on white whatever the terminal's colours. Returns 0 or -errno.
 */
int qr_print(FILE *out, const char *text);

#endif
