/* SPDX-License-Identifier: Apache-2.0 */
#include "qr.h"

#include <errno.h>
#include <qrencode.h>
#include <stdbool.h>

/* ISO/IEC 18004 asks for a quiet zone of 4 modules around the symbol. */
#define QUIET 4

static bool
dark(const QRcode *qr, int x, int y)
{
	if (x < 0 || y < 0 || x >= qr->width || y >= qr->width)
		return false;
	return qr->data[y * qr->width + x] & 1;
}

int
qr_print(FILE *out, const char *text)
{
	QRcode *qr = QRcode_encodeString(text, 0, QR_ECLEVEL_M, QR_MODE_8, 1);

	if (!qr)
		return -errno;
	for (int y = -QUIET; y < qr->width + QUIET; y += 2) {
		/* Black on white, set for each line so that nothing bleeds into the prompt. */
		fputs("\033[30;47m", out);
		for (int x = -QUIET; x < qr->width + QUIET; x++) {
			bool top = dark(qr, x, y), bottom = dark(qr, x, y + 1);

			fputs(top && bottom ? "\u2588"
			      : top         ? "\u2580"
			      : bottom      ? "\u2584"
			                    : " ",
			      out);
		}
		fputs("\033[0m\n", out);
	}
	QRcode_free(qr);
	return 0;
}
