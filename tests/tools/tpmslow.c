/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpmslow: swtpm at the speed of a real TPM chip. A TCP relay between a TSS's swtpm TCTI
 * ("swtpm:host=127.0.0.1,port=Q") and swtpm (port P, control P+1) that answers each TPM
 * command only once the chip it models would have: delay = the chip's time for that command
 * less what swtpm took. Like a chip, it runs one command at a time, in arrival order, across
 * all client connections. It counts commands per command code.
 *
 * The protocol (tpm2-tss 3.2 src/tss2-tcti/tcti-swtpm.c, swtpm's "Control Channel
 * Specification"): on port Q the TCTI opens one TCP connection per TPM command, writes the
 * raw command (10-byte header: tag, size, command code, big-endian), reads the raw response
 * (10-byte header, then size - 10 bytes) and closes; at start it also opens and closes one
 * without a command (a reachability check). On the control port, Q+1, each request is its
 * own connection: a 4-byte command code and its parameters, a 4-byte result and its data
 * (TCTI init sends CMD_SET_LOCALITY). swtpm serves one data and one control client at a
 * time. So tpmslow relays control connections byte for byte, and for each TPM command
 * opens its own connection to swtpm while it holds the chip, so that an idle client never
 * keeps swtpm from the others.
 *
 * Chip models (-L lists them): per-command times in ms from wolfTPM's published benchmarks
 * (docs/benchmarks.md, SPI at 33-43 MHz) where they exist, assumptions otherwise; see
 * chips[] below.
 *
 * Runtime control, without a restart:
 *   SIGUSR1  write the counts to the stats file (-o, replaced atomically) and to stdout
 *   SIGHUP   re-read the control file (-C): lines "chip NAME"; "hold-sign" (every TPM2_Sign
 *            answer is held, the chip busy, until a SIGHUP finds the line gone; at most -M
 *            seconds); "hold-sign MS" (every TPM2_Sign takes MS more); "#" comments. No file,
 *            or no line: the chip given by -c, nothing held. Prints "... control: ..." once
 *            applied.
 *   SIGTERM, SIGINT  write the stats file and exit 0.
 * Event lines on stdout start with the time in epoch ms:
 *   <ms> tpmslow: listening on 127.0.0.1:Q and Q+1, swtpm at P and P+1, chip slb9672
 *   <ms> tpmslow: holding TPM2_Sign (N held in all)
 *   <ms> tpmslow: released TPM2_Sign after X ms
 * Stats ("name value" lines): chip, commands, errors (answers with a TPM error code),
 * control (control connections), busy_ms (chip time, holds included), swtpm_ms (what swtpm
 * took), overruns (commands swtpm took longer for than the model), held, then per command
 * code its count, e.g. "TPM2_Sign 200".
 * Bounded: exits after -t seconds (default 3600), when its parent exits, and with status 1
 * when swtpm cannot be reached or a port cannot be bound (2: usage).
 *   tpmslow -l Q -u P [-c CHIP] [-C CONTROL_FILE] [-o STATS_FILE] [-t SECONDS] [-M SECONDS]
 *   tpmslow -L [-c CHIP]     (the chip models, or one; CHIP defaults to slb9672)
 */
#include <tss2/tss2_tpm2_types.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* swtpm's largest command or response (TPM_BUFFER_MAX) is 4 KiB; leave room. */
#define MAX_TPM_MSG 8192
#define TPM_HEADER  10
/* A TCP connection is either a whole command or nothing: bound how long one may dawdle. */
#define IO_TIMEOUT_MS 10000

struct cmd_time {
	uint32_t cc;
	unsigned us;
};

struct chip {
	const char *name;
	const char *what;
	unsigned other_us; /* commands not in the list */
	const struct cmd_time *times;
};

/*
 * Published (wolfTPM docs/benchmarks.md): ECDSA P-256 sign SLB9672 35.6 ms, SLB9670 68.9 ms;
 * ECC P-256 Create+Load SLB9672 136 ms, SLB9670 231 ms. Assumed: Load 18 ms (SLB9672) and
 * 20 ms (SLB9670), inside DESIGN.md's 15-25 ms; Create and CreatePrimary (both generate an
 * ECC key) at the published Create+Load figure, which overstates Create alone by about a
 * Load; FlushContext 1 ms; EvictControl 30 ms (an NV write); Unseal 10 ms (a load-time
 * decryption and HMAC check); everything else 3 ms (GetCapability, ReadPublic, GetRandom, ...).
 */
static const struct cmd_time slb9672_times[] = {
        {TPM2_CC_Sign, 35600},
        {TPM2_CC_Load, 18000},
        {TPM2_CC_FlushContext, 1000},
        {TPM2_CC_Create, 136000},
        {TPM2_CC_CreatePrimary, 136000},
        {TPM2_CC_CreateLoaded, 136000},
        {TPM2_CC_EvictControl, 30000},
        {TPM2_CC_Unseal, 10000},
        {0, 0},
};
static const struct cmd_time slb9670_times[] = {
        {TPM2_CC_Sign, 68900},
        {TPM2_CC_Load, 20000},
        {TPM2_CC_FlushContext, 1000},
        {TPM2_CC_Create, 231000},
        {TPM2_CC_CreatePrimary, 231000},
        {TPM2_CC_CreateLoaded, 231000},
        {TPM2_CC_EvictControl, 30000},
        {TPM2_CC_Unseal, 10000},
        {0, 0},
};
static const struct cmd_time none_times[] = {{0, 0}};

static const struct chip chips[] = {
        {"slb9672", "Infineon OPTIGA SLB9672 (SPI)", 3000, slb9672_times},
        {"slb9670", "Infineon OPTIGA SLB9670 (SPI)", 3000, slb9670_times},
        {"none", "swtpm's own speed (pass-through)", 0, none_times},
};

#define CC(name)                                                                                   \
	{                                                                                          \
		TPM2_CC_##name, "TPM2_" #name                                                      \
	}
static const struct {
	uint32_t cc;
	const char *name;
} cc_names[] = {
        CC(Startup),        CC(Shutdown),
        CC(SelfTest),       CC(GetCapability),
        CC(GetRandom),      CC(StirRandom),
        CC(CreatePrimary),  CC(Create),
        CC(CreateLoaded),   CC(Load),
        CC(LoadExternal),   CC(ReadPublic),
        CC(Sign),           CC(VerifySignature),
        CC(FlushContext),   CC(EvictControl),
        CC(Unseal),         CC(StartAuthSession),
        CC(PolicyPCR),      CC(PolicyAuthValue),
        CC(PolicyPassword), CC(PolicyGetDigest),
        CC(PolicySecret),   CC(ContextSave),
        CC(ContextLoad),    CC(Hash),
        CC(HMAC),           CC(ECDH_ZGen),
        CC(ECDH_KeyGen),    CC(RSA_Decrypt),
        CC(RSA_Encrypt),    CC(NV_Read),
        CC(NV_Write),       CC(NV_DefineSpace),
        CC(NV_ReadPublic),  CC(NV_UndefineSpace),
        CC(PCR_Read),       CC(PCR_Extend),
        CC(Clear),          CC(TestParms),
        CC(ReadClock),      CC(Import),
        CC(Duplicate),      CC(Quote),
        CC(Certify),        CC(ObjectChangeAuth),
        CC(EncryptDecrypt), CC(EncryptDecrypt2),
};
#undef CC

/* Counts per command code: a small open table (a gateway uses a dozen codes). */
#define MAX_CODES 256
static struct {
	pthread_mutex_t lock;
	uint32_t cc[MAX_CODES];
	uint64_t count[MAX_CODES];
	uint64_t commands, errors, control, overruns, held;
	uint64_t busy_ns, swtpm_ns;
} stats = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The chip: one command at a time, in arrival order (a ticket lock). */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t turn;
	uint64_t next, serving;
} chip_q = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

/* What the control file says; changed by SIGHUP, read per command. */
enum hold { HOLD_NONE, HOLD_UNTIL_RELEASED, HOLD_EXTRA };
static struct {
	pthread_mutex_t lock;
	pthread_cond_t changed;
	const struct chip *chip;
	enum hold hold;
	unsigned hold_ms;
} ctl = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, HOLD_NONE, 0};

static const struct chip *start_chip;
static const char *ctl_path, *stats_path;
static uint16_t swtpm_port;
static unsigned max_hold_s = 60;

static uint64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned long long
epoch_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}

/* One event line on stdout, whole (threads print too). */
static void
event(const char *fmt, ...)
{
	static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;
	va_list ap;

	pthread_mutex_lock(&out);
	printf("%llu tpmslow: ", epoch_ms());
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	pthread_mutex_unlock(&out);
}

static void
fatal(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tpmslow: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static const char *
cc_name(uint32_t cc, char *buf, size_t len)
{
	for (size_t i = 0; i < sizeof(cc_names) / sizeof(cc_names[0]); i++)
		if (cc_names[i].cc == cc)
			return cc_names[i].name;
	snprintf(buf, len, "TPM_CC_0x%08x", cc);
	return buf;
}

static const struct chip *
chip_named(const char *name)
{
	for (size_t i = 0; i < sizeof(chips) / sizeof(chips[0]); i++)
		if (strcmp(chips[i].name, name) == 0)
			return &chips[i];
	return NULL;
}

static unsigned
chip_us(const struct chip *c, uint32_t cc)
{
	for (const struct cmd_time *t = c->times; t->cc; t++)
		if (t->cc == cc)
			return t->us;
	return c->other_us;
}

static void
list_chips(const struct chip *only)
{
	char buf[32];

	for (size_t i = 0; i < sizeof(chips) / sizeof(chips[0]); i++) {
		const struct chip *c = &chips[i];

		if (only && only != c)
			continue;
		printf("%s %s: other commands %.1f ms\n", c->name, c->what, c->other_us / 1000.0);
		for (const struct cmd_time *t = c->times; t->cc; t++)
			printf("%s %s %.1f\n", c->name, cc_name(t->cc, buf, sizeof(buf)),
			       t->us / 1000.0);
		printf("%s handshake %.1f (TPM2_Load + TPM2_Sign + TPM2_FlushContext)\n", c->name,
		       (chip_us(c, TPM2_CC_Load) + chip_us(c, TPM2_CC_Sign) +
		        chip_us(c, TPM2_CC_FlushContext)) /
		               1000.0);
	}
}

/* ---- the stats ---- */

static void
count(uint32_t cc, bool error, uint64_t busy_ns, uint64_t swtpm_ns, bool overrun)
{
	size_t i;

	pthread_mutex_lock(&stats.lock);
	for (i = 0; i < MAX_CODES && stats.count[i] && stats.cc[i] != cc; i++)
		;
	if (i < MAX_CODES) {
		stats.cc[i] = cc;
		stats.count[i]++;
	}
	stats.commands++;
	stats.errors += error;
	stats.overruns += overrun;
	stats.busy_ns += busy_ns;
	stats.swtpm_ns += swtpm_ns;
	pthread_mutex_unlock(&stats.lock);
}

static void
write_stats(FILE *f)
{
	char buf[32];

	pthread_mutex_lock(&ctl.lock);
	fprintf(f, "chip %s\n", ctl.chip->name);
	pthread_mutex_unlock(&ctl.lock);
	pthread_mutex_lock(&stats.lock);
	fprintf(f,
	        "commands %llu\nerrors %llu\ncontrol %llu\nbusy_ms %.1f\nswtpm_ms %.1f\n"
	        "overruns %llu\nheld %llu\n",
	        (unsigned long long)stats.commands, (unsigned long long)stats.errors,
	        (unsigned long long)stats.control, stats.busy_ns / 1e6, stats.swtpm_ns / 1e6,
	        (unsigned long long)stats.overruns, (unsigned long long)stats.held);
	for (size_t i = 0; i < MAX_CODES && stats.count[i]; i++)
		fprintf(f, "%s %llu\n", cc_name(stats.cc[i], buf, sizeof(buf)),
		        (unsigned long long)stats.count[i]);
	pthread_mutex_unlock(&stats.lock);
}

static void
dump_stats(bool to_stdout)
{
	char tmp[4096];
	FILE *f;

	if (to_stdout) {
		event("stats:");
		write_stats(stdout);
		fflush(stdout);
	}
	if (!stats_path)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp", stats_path);
	f = fopen(tmp, "w");
	if (!f) {
		fprintf(stderr, "tpmslow: cannot write %s: %s\n", tmp, strerror(errno));
		return;
	}
	write_stats(f);
	if (fclose(f) != 0 || rename(tmp, stats_path) != 0)
		fprintf(stderr, "tpmslow: cannot write %s: %s\n", stats_path, strerror(errno));
}

/* ---- the control file ---- */

static void
load_control(void)
{
	const struct chip *chip = start_chip;
	enum hold hold = HOLD_NONE;
	unsigned hold_ms = 0;
	char line[256], name[64];
	FILE *f = ctl_path ? fopen(ctl_path, "r") : NULL;

	while (f && fgets(line, sizeof(line), f)) {
		char *p = line + strspn(line, " \t");
		unsigned ms;

		if (*p == '#' || *p == '\n' || *p == '\0')
			continue;
		if (sscanf(p, "chip %63s", name) == 1) {
			if (chip_named(name))
				chip = chip_named(name);
			else
				fprintf(stderr, "tpmslow: %s: no chip model '%s' (tpmslow -L)\n",
				        ctl_path, name);
		} else if (sscanf(p, "hold-sign %u", &ms) == 1) {
			hold = HOLD_EXTRA;
			hold_ms = ms;
		} else if (strncmp(p, "hold-sign", 9) == 0 &&
		           strspn(p + 9, " \t\r\n") == strlen(p + 9)) {
			hold = HOLD_UNTIL_RELEASED;
		} else {
			fprintf(stderr, "tpmslow: %s: ignored: %s", ctl_path, p);
		}
	}
	if (f)
		fclose(f);
	pthread_mutex_lock(&ctl.lock);
	ctl.chip = chip;
	ctl.hold = hold;
	ctl.hold_ms = hold_ms;
	pthread_cond_broadcast(&ctl.changed);
	pthread_mutex_unlock(&ctl.lock);
	if (hold == HOLD_UNTIL_RELEASED)
		event("control: chip %s, TPM2_Sign held until released", chip->name);
	else if (hold == HOLD_EXTRA)
		event("control: chip %s, TPM2_Sign %u ms longer", chip->name, hold_ms);
	else
		event("control: chip %s, nothing held", chip->name);
}

/*
 * A held signature keeps the chip, as a slow chip would: every other TPM command waits too.
 * Returns the nanoseconds held.
 */
static uint64_t
hold_sign(void)
{
	uint64_t t0 = mono_ns(), held;
	struct timespec until;
	bool holding = false;

	clock_gettime(CLOCK_REALTIME, &until);
	pthread_mutex_lock(&ctl.lock);
	if (ctl.hold == HOLD_EXTRA) {
		until.tv_sec += ctl.hold_ms / 1000;
		until.tv_nsec += (long)(ctl.hold_ms % 1000) * 1000000;
	} else if (ctl.hold == HOLD_UNTIL_RELEASED) {
		until.tv_sec += max_hold_s;
		holding = true;
	} else {
		pthread_mutex_unlock(&ctl.lock);
		return 0;
	}
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&stats.lock);
	stats.held++;
	if (holding)
		event("holding TPM2_Sign (%llu held in all)", (unsigned long long)stats.held);
	pthread_mutex_unlock(&stats.lock);
	/* Until the deadline, or (held until released) a reload that lifts the hold. */
	while (pthread_cond_timedwait(&ctl.changed, &ctl.lock, &until) != ETIMEDOUT)
		if (holding && ctl.hold != HOLD_UNTIL_RELEASED)
			break;
	pthread_mutex_unlock(&ctl.lock);
	held = mono_ns() - t0;
	if (holding)
		event("released TPM2_Sign after %.0f ms", held / 1e6);
	return held;
}

/* ---- sockets ---- */

/* Reads exactly len bytes; 0 at a clean end before the first byte, -1 otherwise. */
static int
read_full(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		ssize_t n;

		if (poll(&p, 1, IO_TIMEOUT_MS) <= 0)
			return -1;
		n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return got == 0 && n == 0 ? 0 : -1;
		got += (size_t)n;
	}
	return 1;
}

static int
write_full(int fd, const uint8_t *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int
connect_local(uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static int
listen_local(uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 64) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* ---- the relays ---- */

/* One command through swtpm: its response in rsp, its length returned; exits if swtpm is gone. */
static size_t
swtpm_exchange(const uint8_t *cmd, size_t len, uint8_t *rsp)
{
	int fd = connect_local(swtpm_port);
	uint32_t size;

	if (fd < 0)
		fatal("swtpm at 127.0.0.1:%u: %s", swtpm_port, strerror(errno));
	if (write_full(fd, cmd, len) < 0 || read_full(fd, rsp, TPM_HEADER) != 1)
		fatal("swtpm at 127.0.0.1:%u did not answer", swtpm_port);
	size = (uint32_t)rsp[2] << 24 | (uint32_t)rsp[3] << 16 | (uint32_t)rsp[4] << 8 | rsp[5];
	if (size < TPM_HEADER || size > MAX_TPM_MSG)
		fatal("swtpm answered a size of %u bytes", size);
	if (size > TPM_HEADER && read_full(fd, rsp + TPM_HEADER, size - TPM_HEADER) != 1)
		fatal("swtpm's answer ended early");
	close(fd);
	return size;
}

static void
chip_acquire(void)
{
	uint64_t me;

	pthread_mutex_lock(&chip_q.lock);
	me = chip_q.next++;
	while (chip_q.serving != me)
		pthread_cond_wait(&chip_q.turn, &chip_q.lock);
	pthread_mutex_unlock(&chip_q.lock);
}

static void
chip_release(void)
{
	pthread_mutex_lock(&chip_q.lock);
	chip_q.serving++;
	pthread_cond_broadcast(&chip_q.turn);
	pthread_mutex_unlock(&chip_q.lock);
}

static void
sleep_until(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
	                      .tv_nsec = (long)(ns % 1000000000u)};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* A TCTI's data connection: any number of commands, each answered at the chip's pace. */
static void *
serve_data(void *arg)
{
	int fd = (int)(intptr_t)arg;
	uint8_t cmd[MAX_TPM_MSG], rsp[MAX_TPM_MSG];

	for (;;) {
		uint32_t size, cc, rc;
		uint64_t t0, t1, model_ns;
		size_t rlen;
		int r = read_full(fd, cmd, TPM_HEADER);

		if (r <= 0)
			break; /* the TCTI's reachability check, or the end of its command */
		size = (uint32_t)cmd[2] << 24 | (uint32_t)cmd[3] << 16 | (uint32_t)cmd[4] << 8 |
		       cmd[5];
		cc = (uint32_t)cmd[6] << 24 | (uint32_t)cmd[7] << 16 | (uint32_t)cmd[8] << 8 |
		     cmd[9];
		if (size < TPM_HEADER || size > MAX_TPM_MSG ||
		    (size > TPM_HEADER &&
		     read_full(fd, cmd + TPM_HEADER, size - TPM_HEADER) != 1)) {
			fprintf(stderr, "tpmslow: a client sent a malformed command; closed\n");
			break;
		}
		chip_acquire();
		t0 = mono_ns();
		rlen = swtpm_exchange(cmd, size, rsp);
		t1 = mono_ns();
		pthread_mutex_lock(&ctl.lock);
		model_ns = (uint64_t)chip_us(ctl.chip, cc) * 1000;
		pthread_mutex_unlock(&ctl.lock);
		if (t1 - t0 < model_ns)
			sleep_until(t0 + model_ns);
		if (cc == TPM2_CC_Sign)
			hold_sign();
		rc = (uint32_t)rsp[6] << 24 | (uint32_t)rsp[7] << 16 | (uint32_t)rsp[8] << 8 |
		     rsp[9];
		count(cc, rc != 0, mono_ns() - t0, t1 - t0, t1 - t0 > model_ns && model_ns > 0);
		chip_release();
		if (write_full(fd, rsp, rlen) < 0)
			break;
	}
	close(fd);
	return NULL;
}

/* A control connection: relayed byte for byte to swtpm's control port until either ends. */
static void *
serve_control(void *arg)
{
	int fd = (int)(intptr_t)arg, up = connect_local((uint16_t)(swtpm_port + 1));
	uint8_t buf[4096];

	if (up < 0)
		fatal("swtpm's control port 127.0.0.1:%u: %s", swtpm_port + 1, strerror(errno));
	pthread_mutex_lock(&stats.lock);
	stats.control++;
	pthread_mutex_unlock(&stats.lock);
	for (;;) {
		struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = up, .events = POLLIN}};
		ssize_t n;

		if (poll(p, 2, IO_TIMEOUT_MS) <= 0)
			break;
		if (p[0].revents) {
			n = read(fd, buf, sizeof(buf));
			if (n <= 0 || write_full(up, buf, (size_t)n) < 0)
				break;
		}
		if (p[1].revents) {
			n = read(up, buf, sizeof(buf));
			if (n <= 0 || write_full(fd, buf, (size_t)n) < 0)
				break;
		}
	}
	close(up);
	close(fd);
	return NULL;
}

struct listener {
	int fd;
	void *(*serve)(void *);
};

static void *
accept_loop(void *arg)
{
	const struct listener *l = arg;

	for (;;) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC), one = 1;
		pthread_attr_t attr;
		pthread_t t;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fatal("accept: %s", strerror(errno));
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		/* Two message buffers on the stack, little else. */
		pthread_attr_setstacksize(&attr, 256 * 1024);
		if (pthread_create(&t, &attr, l->serve, (void *)(intptr_t)fd) != 0)
			fatal("cannot start a thread: %s", strerror(errno));
		pthread_attr_destroy(&attr);
	}
	return NULL;
}

static void
usage(void)
{
	fprintf(stderr, "usage: tpmslow -l PORT -u SWTPM_PORT [-c CHIP] [-C CONTROL_FILE] "
	                "[-o STATS_FILE] [-t SECONDS] [-M MAX_HOLD_SECONDS]\n"
	                "       tpmslow -L [-c CHIP]   (the chip models)\n");
	exit(2);
}

int
main(int argc, char *argv[])
{
	static struct listener data, control;
	long port = 0, up = 0, lifetime = 3600;
	const char *chip = NULL;
	bool list = false;
	pid_t parent = getppid();
	sigset_t sigs;
	pthread_t t;
	uint64_t end;
	int ch;

	while ((ch = getopt(argc, argv, "l:u:c:C:o:t:M:L")) != -1) {
		switch (ch) {
		case 'l':
			port = atol(optarg);
			break;
		case 'u':
			up = atol(optarg);
			break;
		case 'c':
			chip = optarg;
			break;
		case 'C':
			ctl_path = optarg;
			break;
		case 'o':
			stats_path = optarg;
			break;
		case 't':
			lifetime = atol(optarg);
			break;
		case 'M':
			max_hold_s = (unsigned)atol(optarg);
			break;
		case 'L':
			list = true;
			break;
		default:
			usage();
		}
	}
	start_chip = chip_named(chip ? chip : "slb9672");
	if (!start_chip) {
		fprintf(stderr, "tpmslow: no chip model '%s'; these are:\n", chip);
		list_chips(NULL);
		return 2;
	}
	if (list) {
		list_chips(chip ? start_chip : NULL);
		return 0;
	}
	if (port < 1 || port > 65534 || up < 1 || up > 65534 || lifetime < 1 || max_hold_s < 1)
		usage();
	swtpm_port = (uint16_t)up;

	/* Signals are taken by this thread alone, with sigtimedwait, never in signal context. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	/* Ends with the test that started it, even one that died without stopping it. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		return 0;

	data.fd = listen_local((uint16_t)port);
	control.fd = listen_local((uint16_t)(port + 1));
	if (data.fd < 0 || control.fd < 0)
		fatal("cannot listen on 127.0.0.1:%ld and %ld: %s", port, port + 1,
		      strerror(errno));
	data.serve = serve_data;
	control.serve = serve_control;
	load_control();
	if (pthread_create(&t, NULL, accept_loop, &data) != 0 ||
	    pthread_create(&t, NULL, accept_loop, &control) != 0)
		fatal("cannot start a thread: %s", strerror(errno));
	event("listening on 127.0.0.1:%ld and %ld, swtpm at %ld and %ld, chip %s", port, port + 1,
	      up, up + 1, start_chip->name);

	end = mono_ns() + (uint64_t)lifetime * 1000000000u;
	for (;;) {
		struct timespec tick = {.tv_sec = 1};
		int sig = sigtimedwait(&sigs, NULL, &tick);

		if (sig == SIGTERM || sig == SIGINT)
			break;
		if (sig == SIGUSR1)
			dump_stats(true);
		else if (sig == SIGHUP)
			load_control();
		if (mono_ns() >= end) {
			event("%ld s are up: exiting", lifetime);
			break;
		}
		if (getppid() != parent)
			break;
	}
	dump_stats(false);
	return 0;
}
