/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_DEVICE_H
#define GW_DEVICE_H

#include <stdbool.h>

/*
 * Device and gateway ids become MQTT client ids, topic levels and folder names: 1 to
 * DEVICE_ID_MAX letters, digits, '.', '_' or '-', starting with a letter or digit. Names that
 * sit beside them (policy and attribute names, groups) follow the same rule.
 */
#define DEVICE_ID_MAX 64

bool device_id_valid(const char *id);

#endif
