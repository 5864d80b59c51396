/* SPDX-License-Identifier: Apache-2.0 */
#include "device.h"

#include <ctype.h>
#include <string.h>

bool
device_id_valid(const char *s)
{
	size_t n = strlen(s);

	/* Not starting with '.': ids name folders, and "." or ".." would name others. */
	if (n == 0 || n > DEVICE_ID_MAX || !isalnum((unsigned char)s[0]))
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!isalnum((unsigned char)s[i]) && !strchr("._-", s[i]))
			return false;
	}
	return true;
}
