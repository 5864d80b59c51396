/* SPDX-License-Identifier: Apache-2.0 */
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static void __attribute__((noreturn)) out_of_memory(size_t nmemb, size_t size)
{
	log_errx("out of memory: %zu x %zu bytes; aborting (systemd restarts the daemon)", nmemb,
	         size);
	abort();
}

void
xalloc_failed(const char *what)
{
	log_errx("out of memory in %s; aborting (systemd restarts the daemon)", what);
	abort();
}

void *
xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (!p)
		out_of_memory(1, size);
	return p;
}

void *
xcalloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);

	if (!p)
		out_of_memory(nmemb, size);
	return p;
}

void *
xreallocarray(void *p, size_t nmemb, size_t size)
{
	void *q = reallocarray(p, nmemb ? nmemb : 1, size ? size : 1);

	if (!q)
		out_of_memory(nmemb, size);
	return q;
}

char *
xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		out_of_memory(1, strlen(s) + 1);
	return p;
}

char *
xstrndup(const char *s, size_t n)
{
	char *p = strndup(s, n);

	if (!p)
		out_of_memory(1, n + 1);
	return p;
}

char *
xvasprintf(const char *fmt, va_list ap)
{
	char *p;

	if (vasprintf(&p, fmt, ap) < 0)
		out_of_memory(1, strlen(fmt));
	return p;
}

char *
xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	p = xvasprintf(fmt, ap);
	va_end(ap);
	return p;
}
