/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_TPMKEY_H
#define GW_TPMKEY_H

#include <stddef.h>
#include <stdint.h>

/*
 * The TPMKey structure of a "TSS2 PRIVATE KEY" file (draft-bottomley-tpm2-keys, 3.1 "TPMkey
 * Syntax"), as DER, for kstpm.c. The TPM structures inside are bytes here (kstpm.c marshals
 * them), so that tss2 headers stay in kstpm.c. Only what the keystore uses is written or read:
 * a loadable key (id-loadablekey) with no password and no policy.
 */

/* A marshalled TPM2B is at most its 2-byte size and 65535 bytes. */
#define TPMKEY_PART_MAX (2 + 65535)

struct tpmkey {
	uint32_t parent;     /* the parent key's handle */
	const uint8_t *pub;  /* marshalled TPM2B_PUBLIC */
	size_t publen;       /* at most TPMKEY_PART_MAX */
	const uint8_t *priv; /* marshalled TPM2B_PRIVATE */
	size_t privlen;      /* at most TPMKEY_PART_MAX */
};

/*
 * The DER of a loadable key with emptyAuth TRUE and none of the other optional fields, in a
 * malloc'd buffer. -EINVAL (logged) if a part is longer than TPMKEY_PART_MAX.
 */
int tpmkey_encode(const struct tpmkey *key, uint8_t **der, size_t *len);

/*
 * Reads one TPMKey that fills der exactly, in DER only. key->pub and key->priv then point into
 * der. -EBADMSG if it is not that (BER, a byte missing or left over, a field out of order or
 * unknown, a parent that is no 32-bit handle); -ENOTSUP if it is a TPMKey the keystore cannot
 * use: another type, a password (emptyAuth FALSE), a policy, an import secret. The reason is
 * logged. The TPM structures inside are not looked at.
 */
int tpmkey_decode(const uint8_t *der, size_t len, struct tpmkey *key);

#endif
