/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_OPTIONS_H
#define GW_OPTIONS_H

/*
 * The composition root's half of "each module takes its own options": the modules know
 * nothing of the config file; these build each one's options from it, for gatewayd (at start
 * and at every reload) and for gwctl. Strings in the options point into conf.
 */

struct coapbr_options;
struct enrol_options;
struct gwconf;
struct keystore_config;
struct mqttbr_options;
struct spool_limits;

void options_keystore(struct keystore_config *out, const struct gwconf *conf);
void options_spool(struct spool_limits *out, const struct gwconf *conf);
void options_mqttbr(struct mqttbr_options *out, const struct gwconf *conf);
void options_coapbr(struct coapbr_options *out, const struct gwconf *conf);
void options_enrol(struct enrol_options *out, const struct gwconf *conf);

#endif
