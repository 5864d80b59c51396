/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_XALLOC_H
#define GW_XALLOC_H

#include <stdarg.h>
#include <stddef.h>

/*
 * Allocation that does not fail: when memory runs out, the process logs how much it asked
 * for and aborts, and systemd restarts it (Restart=on-failure). Error paths are for errors a
 * user can cause or fix; a branch per malloc was code no test ran, and three of them were
 * known to be wrong (a use-after-free, a device left connecting for ever, a half-applied
 * reload). Libraries' own allocations (OpenSSL, libcoap, libconfig) still fail as they do.
 */
void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
/* nmemb * size, refused (as out of memory) if it overflows; p may be NULL. */
void *xreallocarray(void *p, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* A new string, printf-style. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
/*
 * For a library whose allocation failure comes back as a bare NULL from a call that cannot
 * fail otherwise (libcoap's coap_new_str_const(), say): the same log line and abort. what
 * names the call.
 */
void xalloc_failed(const char *what) __attribute__((noreturn));

#endif
