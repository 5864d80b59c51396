/* SPDX-License-Identifier: Apache-2.0 */
#include "options.h"
#include "conf.h"
#include "keystore.h"
#include "spool.h"

void
options_keystore(struct keystore_config *out, const struct gwconf *conf)
{
	*out = (struct keystore_config){
	        .state_dir = conf->state_dir,
	        .backend = conf->keystore.backend,
	        .tcti = conf->keystore.tcti,
	        .parent = conf->keystore.parent,
	        .create_parent = conf->keystore.create_parent,
	        .device_ca_file = conf->keystore.device_ca_file,
	        .psk_grace = (unsigned)conf->keystore.psk_grace,
	};
}

void
options_spool(struct spool_limits *out, const struct gwconf *conf)
{
	*out = (struct spool_limits){
	        .device_bytes = (uint64_t)conf->spool.device_bytes,
	        .total_bytes = (uint64_t)conf->spool.total_bytes,
	        .max_age = (unsigned)conf->spool.max_age,
	        .full = conf->spool.drop_oldest ? SPOOL_DROP_OLDEST : SPOOL_REFUSE,
	        .segment_bytes = (size_t)conf->spool.segment_bytes,
	};
}
