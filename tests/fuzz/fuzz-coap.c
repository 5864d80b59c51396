/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer harness for the sensor side's request handlers (bridges/coap/coapbr.c): uplink POST
 * and PUT with Block1 assembly, GET and Observe on the command resource, a sensor's ACK or Reset
 * of a pushed command, a reload and a closed session while answers are pending. Messages reach
 * them as in gatewayd: as DTLS records of a PSK session (an OpenSSL client in this process,
 * paired in a soft keystore), parsed by libcoap and dispatched from the daemon's loop. The
 * router behind them is the harness: it decides each uplink's outcome, now or later, as the
 * input says. It aborts when
 *   - an uplink handed to the router is larger than sensors.max_payload, is not the paired
 *     device's, is not on one of the current config's routes, or (a message without Block1)
 *     differs from the message sent in payload, method, type or Content-Format;
 *   - the gateway sends a datagram that does not parse as CoAP, or one with a request's code;
 *   - the gateway sends the sensor anything but an alert after it closed its session, or the
 *     session cannot be set up again.
 * AddressSanitizer sees a freed request or session used; LeakSanitizer sees a request never
 * freed at exit.
 *
 * The input is a run of records, each an op byte (its low 3 bits) and the op's operands:
 *   0 LEN(2, big-endian) BYTES  a CoAP message (over UDP, RFC 7252 section 3; at most 1400
 *       bytes, so that it fits one datagram), sent as one DTLS record. Its message ID is moved
 *       into this input's own range (the low 5 bits kept: a repeat stays a repeat), so that an
 *       input's answers do not depend on the inputs before it.
 *   1 STATUS AGE    the oldest uplink waiting for its outcome gets STATUS % 5 (enum
 *       coapbr_status), AGE its Max-Age
 *   2 LEN BYTES CF  a command queued for the device (CF 255: no Content-Format), and
 *       coapbr_commands_ready()
 *   3               a reload: the other of two configs (other routes, sensors.max_payload and
 *       command resource; one config's command resource is a route of the other's)
 *   4               the device suspended, or active again
 *   5 MODE          uplinks from now on: MODE bit 0 set, answered at once with (MODE >> 1) % 5;
 *       clear, left waiting for op 1 (the start)
 *   6 HOW           the oldest CON the gateway sent and the sensor has not answered: ACK (HOW
 *       even) or Reset
 *   7               the device's sessions closed by the gateway (the first two times in an
 *       input); the sensor shakes hands again before its next message
 * A record cut short ends the input. Then everything is put back as it was: the waiting
 * uplinks completed, the first config, the device active, its commands dropped, the gateway's
 * CONs acknowledged, the observation ended and any upload going on finished.
 */
#include <arpa/inet.h>
#include <coap3/coap.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cmdq.h"
#include "coapbr.h"
#include "conf.h"
#include "device.h"
#include "fuzz.h"
#include "keystore.h"
#include "loop.h"
#include "options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DEVICE        "s1"
#define PENDING_MAX   64
#define UNANSWERED    16
#define MESSAGE_MAX   1400
#define MID_SPAN      32
#define PAYLOAD_A     256  /* sensors.max_payload of the first config ... */
#define PAYLOAD_B     1024 /* ... and of the second */
#define CONNECT_MAX   2000 /* rounds of a handshake before it counts as failed */
#define SETTLE_ROUNDS 64

static const uint8_t psk[] = "fuzz-coap-sensor-key-0123456789a";

static struct gw_loop *loop;
static struct keystore *ks;
static struct cmdq *commands;
/* DEVICE's commands, as the router keeps them in its state for the device. */
static struct cmdq_queue device_commands;
static struct coapbr *br;
static struct gwconf *confs[2];
static unsigned conf_now;
static struct sensor_ops ops;
static uint16_t port;

/* The sensor: an OpenSSL DTLS client. */
static SSL_CTX *client_ctx;
static SSL *ssl;
static int client_fd = -1;
static bool connected; /* else its last handshake was refused: the device is not active */

/* The router's side. */
static struct sensor_request *pending[PENDING_MAX];
static size_t npending;
static bool answer_now;
static enum sensor_status answer_status;

/* The message last sent, as libcoap parsed it, for the checks in on_uplink(). */
static struct {
	bool set;
	bool block1;
	coap_pdu_code_t code;
	coap_pdu_type_t type;
	int content_format;
	const uint8_t *payload;
	size_t len;
} sent;

/* CONs the gateway sent that the sensor has not answered, oldest first. */
static coap_mid_t unanswered[UNANSWERED];
static size_t nunanswered;

static uint16_t mid_base;

static int
option_value(const coap_pdu_t *pdu, coap_option_num_t num)
{
	coap_opt_iterator_t it;
	coap_opt_t *opt = coap_check_option(pdu, num, &it);

	return opt ? (int)coap_decode_var_bytes(coap_opt_value(opt), coap_opt_length(opt)) : -1;
}

static void
on_uplink(struct sensor_request *req, const struct sensor_uplink *up, void *data)
{
	const struct gwconf *conf = confs[conf_now];

	(void)data;
	check(strcmp(up->dev->id, DEVICE) == 0);
	check(up->route >= conf->routes && up->route < conf->routes + conf->nroutes);
	check(up->len <= (size_t)conf->sensors.max_payload);
	check(sent.set);
	check(up->put == (sent.code == COAP_REQUEST_CODE_PUT));
	check(up->confirmable == (sent.type == COAP_MESSAGE_CON));
	if (!sent.block1) {
		check(up->len == sent.len);
		check(up->len == 0 || memcmp(up->payload, sent.payload, up->len) == 0);
		check(up->content_format == sent.content_format);
	}
	if (answer_now || npending == PENDING_MAX)
		coapbr_complete(req, answer_status, 7);
	else
		pending[npending++] = req;
}

/* The command queue, as the router keeps it. */
static struct sensor_command *
on_command_take(struct device *dev, void *data)
{
	(void)data;
	check(strcmp(dev->id, DEVICE) == 0);
	return cmdq_pop(&device_commands);
}

static void
on_command_return(struct device *dev, struct sensor_command *cmd, void *data)
{
	(void)data;
	check(strcmp(dev->id, DEVICE) == 0);
	cmdq_requeue(&device_commands, cmd);
}

static size_t
on_commands_waiting(struct device *dev, void *data)
{
	(void)data;
	check(strcmp(dev->id, DEVICE) == 0);
	return cmdq_depth(&device_commands);
}

static bool
on_may_read(struct device *dev, const char *resource, void *data)
{
	(void)resource;
	(void)data;
	return strcmp(dev->id, DEVICE) == 0;
}

/* DEVICE as the store registered it. */
static struct device *
the_device(void)
{
	struct device *dev = device_find(keystore_devices(ks), DEVICE);

	check(dev);
	return dev;
}

/* Runs the gateway's loop until nothing is ready: the datagrams sent, deferred answers. */
static void
settle_gateway(void)
{
	for (int i = 0; i < SETTLE_ROUNDS; i++) {
		int n = gw_loop_dispatch(loop, 0);

		check(n >= 0);
		if (n == 0)
			return;
	}
}

/* Reads what the gateway sent the sensor and checks that each is CoAP. */
static void
drain_sensor(void)
{
	static uint8_t buf[2048];
	int n;

	while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) {
		coap_pdu_t *pdu = coap_pdu_init(0, 0, 0, (size_t)n);
		coap_pdu_code_t code;

		check(pdu);
		check(coap_pdu_parse(COAP_PROTO_UDP, buf, (size_t)n, pdu));
		code = coap_pdu_get_code(pdu);
		/* An empty message (0.00) or a response (2.xx, 4.xx, 5.xx), never a request. */
		check(code == COAP_EMPTY_CODE || code >= COAP_RESPONSE_CODE(200));
		if (coap_pdu_get_type(pdu) == COAP_MESSAGE_CON && nunanswered < UNANSWERED)
			unanswered[nunanswered++] = coap_pdu_get_mid(pdu);
		coap_delete_pdu(pdu);
	}
	ERR_clear_error();
}

static void
settle(void)
{
	settle_gateway();
	drain_sensor();
}

static unsigned
psk_client(SSL *s, const char *hint, char *identity, unsigned max_identity, uint8_t *key,
           unsigned max_key)
{
	(void)s;
	(void)hint;
	if (max_identity < sizeof(DEVICE) || max_key < sizeof(psk) - 1)
		return 0;
	memcpy(identity, DEVICE, sizeof(DEVICE));
	memcpy(key, psk, sizeof(psk) - 1);
	return sizeof(psk) - 1;
}

/*
 * A new DTLS session from a new port, as a sensor that restarted: established, or refused
 * when the device is not active.
 */
static void
connect_sensor(void)
{
	struct sockaddr_in to = {.sin_family = AF_INET,
	                         .sin_port = htons(port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	BIO *bio;
	int r = 0;

	SSL_free(ssl);
	if (client_fd >= 0)
		close(client_fd);
	client_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	check(client_fd >= 0);
	check(connect(client_fd, (struct sockaddr *)&to, sizeof(to)) == 0);
	ssl = SSL_new(client_ctx);
	check(ssl);
	bio = BIO_new_dgram(client_fd, BIO_NOCLOSE);
	check(bio);
	BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, &to);
	SSL_set_bio(ssl, bio, bio);
	/* Loopback loses nothing; a record of a whole message must go as one datagram. */
	SSL_set_options(ssl, SSL_OP_NO_QUERY_MTU);
	DTLS_set_link_mtu(ssl, 1500);
	nunanswered = 0;
	for (int i = 0; i < CONNECT_MAX && (r = SSL_connect(ssl)) != 1; i++) {
		if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ)
			break;
		check(gw_loop_dispatch(loop, 10) >= 0);
	}
	ERR_clear_error();
	connected = r == 1;
	check(connected == keystore_device_usable(ks, DEVICE));
	if (connected) {
		settle();
		check(coapbr_device_sessions(br, DEVICE) >= 1);
	}
}

/* Sends one CoAP message as the sensor's next datagram, and lets the gateway take it. */
static void
transmit(const uint8_t *msg, size_t len)
{
	coap_pdu_t *pdu;

	if (!connected) {
		if (!keystore_device_usable(ks, DEVICE))
			return;
		connect_sensor();
	}
	pdu = coap_pdu_init(0, 0, 0, len);
	check(pdu);
	sent.set = coap_pdu_parse(COAP_PROTO_UDP, msg, len, pdu);
	if (sent.set) {
		coap_opt_iterator_t it;

		sent.block1 = coap_check_option(pdu, COAP_OPTION_BLOCK1, &it) != NULL;
		sent.code = coap_pdu_get_code(pdu);
		sent.type = coap_pdu_get_type(pdu);
		sent.content_format = option_value(pdu, COAP_OPTION_CONTENT_FORMAT);
		if (!coap_get_data(pdu, &sent.len, &sent.payload))
			sent.len = 0;
	}
	check(SSL_write(ssl, msg, (int)len) == (int)len);
	settle();
	sent.set = false;
	coap_delete_pdu(pdu);
	/* A message libcoap took as the end of the session: the sensor shakes hands again. */
	if (coapbr_device_sessions(br, DEVICE) == 0)
		connect_sensor();
}

/* One of the input's messages, its message ID moved into the input's range. */
static void
send_message(uint8_t *msg, size_t len)
{
	if (len >= 4) {
		uint16_t mid = (uint16_t)(mid_base + ((msg[2] << 8 | msg[3]) % MID_SPAN));

		msg[2] = (uint8_t)(mid >> 8);
		msg[3] = (uint8_t)mid;
	}
	transmit(msg, len);
}

/*
 * The gateway closes the device's session: after its close_notify it sends nothing more to the
 * sensor's port, not even the commands that went back to the queue (a message sent on a
 * closed session would have libcoap start a DTLS handshake of its own towards the sensor).
 */
static void
drop_session(void)
{
	uint8_t buf[2048];
	ssize_t n;

	coapbr_drop_device(br, DEVICE, false);
	settle_gateway();
	coapbr_commands_ready(br, the_device());
	settle_gateway();
	while ((n = recv(client_fd, buf, sizeof(buf), 0)) > 0)
		check(buf[0] == 21); /* DTLS content type: alert (RFC 6347 4.1) */
	connected = false;
}

/* An empty ACK or Reset to the gateway's oldest CON still unanswered. */
static void
answer_oldest(bool reset)
{
	uint8_t msg[4];

	if (!connected)
		nunanswered = 0;
	if (!nunanswered)
		return;
	msg[0] = (uint8_t)(0x40 | (reset ? COAP_MESSAGE_RST : COAP_MESSAGE_ACK) << 4);
	msg[1] = 0;
	msg[2] = (uint8_t)(unanswered[0] >> 8);
	msg[3] = (uint8_t)unanswered[0];
	memmove(unanswered, unanswered + 1, --nunanswered * sizeof(unanswered[0]));
	check(SSL_write(ssl, msg, sizeof(msg)) == (int)sizeof(msg));
	settle();
}

static void
complete_oldest(enum sensor_status status, unsigned max_age)
{
	struct sensor_request *req;

	if (!npending)
		return;
	req = pending[0];
	memmove(pending, pending + 1, --npending * sizeof(pending[0]));
	coapbr_complete(req, status, max_age);
	settle();
}

static void
use_conf(unsigned which)
{
	struct coapbr_options co;

	conf_now = which;
	options_coapbr(&co, confs[which]);
	coapbr_reconfigure(br, &co);
	cmdq_set_limits(commands, (size_t)confs[which]->downlink.queue,
	                (unsigned)confs[which]->downlink.expiry);
}

static void
set_active(bool active)
{
	check(keystore_device_set_state(ks, DEVICE,
	                                active ? KEYSTORE_ACTIVE : KEYSTORE_SUSPENDED) == 0);
}

/* A message of the harness's own, with a message ID outside the input's range. */
static void
send_own(const uint8_t *msg, size_t len)
{
	uint8_t copy[64];

	check(len <= sizeof(copy));
	memcpy(copy, msg, len);
	copy[2] = (uint8_t)((mid_base + MID_SPAN) >> 8);
	copy[3] = (uint8_t)(mid_base + MID_SPAN);
	transmit(copy, len);
}

/* What an input changed, put back for the next one. */
static void
restore(void)
{
	/* GET cmd with Observe 1: the observation ends (RFC 7641 section 3.6). */
	static const uint8_t unobserve[] = {0x50, 0x01, 0, 0, 0x61, 0x01, 0x53, 'c', 'm', 'd'};
	/* POST t, Block1 NUM 0 M 0 SZX 0: a whole message in one block ends an upload going on. */
	static const uint8_t whole[] = {0x50, 0x02, 0, 0, 0xb1, 't', 0xd1, 0x03, 0x00, 0xff, 'x'};

	while (npending)
		complete_oldest(SENSOR_CHANGED, 0);
	if (conf_now != 0)
		use_conf(0);
	if (!keystore_device_usable(ks, DEVICE))
		set_active(true);
	cmdq_queue_clear(&device_commands);
	while (nunanswered)
		answer_oldest(false);
	answer_now = true;
	answer_status = SENSOR_CHANGED;
	/* A sensor whose session was closed starts afresh with its next one. */
	if (connected) {
		send_own(unobserve, sizeof(unobserve));
		send_own(whole, sizeof(whole));
		while (nunanswered)
			answer_oldest(false);
	}
	mid_base = (uint16_t)(mid_base + 2 * MID_SPAN);
}

static struct gwconf *
load_conf(const char *dir, const char *name, const char *text)
{
	char path[PATH_MAX + 64];
	struct gwconf_errors errs;
	struct gwconf *conf;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fuzz_write(path, text, strlen(text), 0600);
	if (gwconf_load(path, &conf, &errs) < 0) {
		for (size_t i = 0; i < errs.count; i++)
			fprintf(stderr, "%s\n", errs.lines[i]);
		abort();
	}
	gwconf_errors_finish(&errs);
	return conf;
}

/* A free UDP port on 127.0.0.1 for the gateway (nothing else binds there in this process). */
static uint16_t
free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	check(fd >= 0);
	check(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	check(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
	close(fd);
	return ntohs(a.sin_port);
}

static void
teardown(void)
{
	while (npending)
		complete_oldest(SENSOR_CHANGED, 0);
	SSL_free(ssl);
	SSL_CTX_free(client_ctx);
	if (client_fd >= 0)
		close(client_fd);
	coapbr_free(br);
	cmdq_queue_clear(&device_commands);
	cmdq_free(commands);
	keystore_free(ks);
	gwconf_free(confs[0]);
	gwconf_free(confs[1]);
	gw_loop_free(loop);
}

static void
setup(void)
{
	const char *dir = fuzz_tmpdir("coap");
	char state[PATH_MAX + 16], text[PATH_MAX + 2048];
	struct coapbr_options co;
	struct keystore_config cfg;
	uint8_t out[KEYSTORE_PSK_MAX];
	size_t outlen;

	fuzz_quiet_log("fuzz-coap");
	port = free_port();
	snprintf(state, sizeof(state), "%s/state", dir);
	check(mkdir(state, 0700) == 0);
	/* Two configs whose routes and command resource trade places (coapbr's forget_route()). */
	snprintf(text, sizeof(text),
	         "gateway = { id = \"gw-fuzz\"; state_dir = \"%s\"; };\n"
	         "sensors = { listen = \"127.0.0.1\"; port = %u; max_payload = %d; };\n"
	         "upstream = { broker = \"mqtts://broker.test\"; ca_file = \"/dev/null\"; "
	         "};\n"
	         "routes = ( { resource = \"t\"; topic = \"d/${device}/t\"; },\n"
	         "           { resource = \"a/b\"; topic = \"d/${device}/ab\"; } );\n"
	         "downlink = { topic = \"c/${device}/#\"; resource = \"cmd\"; queue = 4; };\n",
	         state, port, PAYLOAD_A);
	confs[0] = load_conf(dir, "a.conf", text);
	snprintf(text, sizeof(text),
	         "gateway = { id = \"gw-fuzz\"; state_dir = \"%s\"; };\n"
	         "sensors = { listen = \"127.0.0.1\"; port = %u; max_payload = %d; };\n"
	         "upstream = { broker = \"mqtts://broker.test\"; ca_file = \"/dev/null\"; "
	         "};\n"
	         "routes = ( { resource = \"a/b\"; topic = \"d/${device}/ab\"; },\n"
	         "           { resource = \"cmd\"; topic = \"d/${device}/cmd\"; } );\n"
	         "downlink = { topic = \"c/${device}/#\"; resource = \"t\"; queue = 2; };\n",
	         state, port, PAYLOAD_B);
	confs[1] = load_conf(dir, "b.conf", text);

	options_keystore(&cfg, confs[0]);
	check(keystore_open(&ks, &cfg) == 0);
	check(keystore_device_add(ks, DEVICE, NULL, psk, sizeof(psk) - 1, out, &outlen) == 0);
	commands = cmdq_new((size_t)confs[0]->downlink.queue, (unsigned)confs[0]->downlink.expiry);
	check(commands);
	cmdq_queue_init(&device_commands, commands, DEVICE);
	check(gw_loop_new(&loop) == 0);
	ops = (struct sensor_ops){
	        .uplink = on_uplink,
	        .may_read = on_may_read,
	        .command_take = on_command_take,
	        .command_return = on_command_return,
	        .commands_waiting = on_commands_waiting,
	};
	options_coapbr(&co, confs[0]);
	check(coapbr_new(&br, loop, &co, ks, &ops, NULL) == 0);

	client_ctx = SSL_CTX_new(DTLS_client_method());
	check(client_ctx);
	SSL_CTX_set_psk_client_callback(client_ctx, psk_client);
	check(SSL_CTX_set_cipher_list(client_ctx, "PSK"));
	connect_sensor();
	answer_now = true;
	answer_status = SENSOR_CHANGED;
	atexit(teardown);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t msg[MESSAGE_MAX];
	static bool ready;
	unsigned drops = 0;

	if (!ready) {
		setup();
		ready = true;
	}
	while (size > 0) {
		uint8_t op = data[0] & 7;
		size_t len;

		data++;
		size--;
		switch (op) {
		case 0:
			if (size < 2)
				goto done;
			len = (size_t)(data[0] << 8 | data[1]) % (MESSAGE_MAX + 1);
			if (size < 2 + len)
				goto done;
			memcpy(msg, data + 2, len);
			send_message(msg, len);
			data += 2 + len;
			size -= 2 + len;
			break;
		case 1:
			if (size < 2)
				goto done;
			complete_oldest((enum sensor_status)(data[0] % 5), data[1]);
			data += 2;
			size -= 2;
			break;
		case 2:
			if (size < 1 || size < 2 + (size_t)data[0])
				goto done;
			len = data[0];
			check(cmdq_push(&device_commands, data + 1, len,
			                data[1 + len] == 255 ? -1 : data[1 + len]) >= 0);
			coapbr_commands_ready(br, the_device());
			settle();
			data += 2 + len;
			size -= 2 + len;
			break;
		case 3:
			use_conf(!conf_now);
			settle();
			break;
		case 4:
			set_active(!keystore_device_usable(ks, DEVICE));
			break;
		case 5:
			if (size < 1)
				goto done;
			answer_now = data[0] & 1;
			answer_status = (enum sensor_status)((data[0] >> 1) % 5);
			data++;
			size--;
			break;
		case 6:
			if (size < 1)
				goto done;
			answer_oldest(data[0] & 1);
			data++;
			size--;
			break;
		case 7:
			/* A handshake costs as much as a hundred messages: two per input. */
			if (drops++ == 2)
				break;
			drop_session();
			break;
		}
	}
done:
	restore();
	return 0;
}
