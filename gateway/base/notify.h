/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_NOTIFY_H
#define GW_NOTIFY_H

#include <stdint.h>
#include <sys/types.h>

/*
 * The service manager's notification protocol (sd_notify(3)), spoken directly so that gatewayd
 * needs no libsystemd: "KEY=VALUE" lines in one datagram to the AF_UNIX socket named by
 * $NOTIFY_SOCKET ("/path", or "@name" for an abstract socket). Without $NOTIFY_SOCKET (not
 * started by systemd, or not Type=notify) every call does nothing and returns 0.
 */

struct gw_loop;
struct gw_notify_watchdog;

/* Sends state, e.g. "READY=1\nSTATUS=ready: 3 devices". 0, or -errno. */
int gw_notify_send(const char *state);
int gw_notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * The watchdog timeout asked of this process, from the values of $WATCHDOG_USEC and
 * $WATCHDOG_PID (either may be NULL): *usec is 0 when none is asked (unset, or $WATCHDOG_PID
 * names another process, e.g. we were forked from the one the manager started). -EINVAL if a
 * value is not a positive number.
 */
int gw_notify_watchdog_parse(const char *usec_env, const char *pid_env, pid_t self, uint64_t *usec);

/*
 * How often to ping for a watchdog timeout of usec: half of it, as sd_watchdog_enabled(3)
 * advises, so one late wakeup does not cost a restart. At least 1 ms.
 */
uint64_t gw_notify_watchdog_interval_ms(uint64_t usec);

/*
 * Pings the manager (WATCHDOG=1) from a timer on loop, as $WATCHDOG_USEC and $WATCHDOG_PID
 * ask: only a loop that keeps turning pings, so a wedged daemon is restarted. *out is NULL
 * when no watchdog is asked. 0, or -EINVAL (malformed environment).
 */
int gw_notify_watchdog_new(struct gw_notify_watchdog **out, struct gw_loop *loop);
/* Stops the pings; accepts NULL. */
void gw_notify_watchdog_free(struct gw_notify_watchdog *wd);
/* The ping interval in milliseconds. */
uint64_t gw_notify_watchdog_period_ms(const struct gw_notify_watchdog *wd);

#endif
