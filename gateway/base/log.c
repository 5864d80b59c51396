/* SPDX-License-Identifier: Apache-2.0 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <pthread.h>

static struct {
	bool to_stderr;
	/* journald reads "<N>" prefixes on stderr as the syslog priority of the line. */
	bool journal;
	enum log_level level;
	const char *ident;
} log_state = {.to_stderr = true, .level = LOG_LEVEL_INFO, .ident = "gatewayd"};

/* The TPM worker and the provider may log from their own threads: keep each line whole. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void
log_init(const char *ident, bool to_stderr, enum log_level level)
{
	log_state.ident = ident;
	log_state.to_stderr = to_stderr;
	log_state.level = level;
	log_state.journal = to_stderr && getenv("JOURNAL_STREAM") != NULL;
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void
log_set_level(enum log_level level)
{
	log_state.level = level;
}

enum log_level
log_get_level(void)
{
	return log_state.level;
}

int
log_level_parse(const char *name, enum log_level *out)
{
	static const struct {
		const char *name;
		enum log_level level;
	} names[] = {
	        {"error", LOG_LEVEL_ERR},
	        {"warning", LOG_LEVEL_WARN},
	        {"info", LOG_LEVEL_INFO},
	        {"debug", LOG_LEVEL_DEBUG},
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcasecmp(name, names[i].name) == 0) {
			*out = names[i].level;
			return 0;
		}
	}
	return -EINVAL;
}

static void
vlog(enum log_level level, const char *errstr, const char *fmt, va_list ap)
{
	static const char *const tags[] = {
	        [LOG_LEVEL_ERR] = "error: ",
	        [LOG_LEVEL_WARN] = "warning: ",
	        [LOG_LEVEL_INFO] = "",
	        [LOG_LEVEL_DEBUG] = "debug: ",
	};
	char msg[1024];
	int saved = errno;

	if (level > log_state.level) {
		errno = saved;
		return;
	}
	vsnprintf(msg, sizeof(msg), fmt, ap);
	pthread_mutex_lock(&log_lock);
	if (log_state.to_stderr) {
		if (log_state.journal)
			fprintf(stderr, "<%d>", (int)level);
		fprintf(stderr, "%s: %s%s%s%s\n", log_state.ident, tags[level], msg,
		        errstr ? ": " : "", errstr ? errstr : "");
		fflush(stderr);
	} else {
		syslog((int)level, "%s%s%s", msg, errstr ? ": " : "", errstr ? errstr : "");
	}
	pthread_mutex_unlock(&log_lock);
	errno = saved;
}

#define LOG_BODY(level, errstr)                                                                    \
	do {                                                                                       \
		va_list ap;                                                                        \
		va_start(ap, fmt);                                                                 \
		vlog(level, errstr, fmt, ap);                                                      \
		va_end(ap);                                                                        \
	} while (0)

void
log_warn(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_WARN, strerror(errno));
}

void
log_warnx(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_WARN, NULL);
}

void
log_info(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_INFO, NULL);
}

void
log_debug(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_DEBUG, NULL);
}

void
log_errx(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_ERR, NULL);
}

void
fatal(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_ERR, strerror(errno));
	exit(1);
}

void
fatalx(const char *fmt, ...)
{
	LOG_BODY(LOG_LEVEL_ERR, NULL);
	exit(1);
}

void
format_utc(time_t t, char *buf, size_t len)
{
	struct tm tm;

	if (!gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, len, "-");
}
