/* SPDX-License-Identifier: Apache-2.0 */
#include "device.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

/*
 * A sorted array of pointers: found in log n, listed in id order for gwctl and the metrics,
 * and the structs never move. At 10,000 devices an add or a removal moves at most 80 KB.
 */
struct device_registry {
	struct device **devs;
	size_t n, cap;
	void (*on_upstream)(struct device *dev, enum device_upstream was, void *data);
	void *on_upstream_data;
	struct remove_watcher *on_remove; /* in the order they came */
};

struct remove_watcher {
	void (*fn)(struct device *dev, void *data);
	void *data;
	struct remove_watcher *next;
};

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

struct device_registry *
device_registry_new(void)
{
	return xcalloc(1, sizeof(struct device_registry));
}

void
device_registry_free(struct device_registry *reg)
{
	if (!reg)
		return;
	while (reg->n)
		device_remove(reg, reg->devs[reg->n - 1]);
	while (reg->on_remove) {
		struct remove_watcher *w = reg->on_remove;

		reg->on_remove = w->next;
		free(w);
	}
	free(reg->devs);
	free(reg);
}

/* Where id is, or would go: true if it is there. */
static bool
position(const struct device_registry *reg, const char *id, size_t *pos)
{
	size_t lo = 0, hi = reg->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(reg->devs[mid]->id, id);

		if (c == 0) {
			*pos = mid;
			return true;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*pos = lo;
	return false;
}

int
device_add(struct device_registry *reg, const char *id, struct device **out)
{
	struct device *dev;
	size_t pos;

	if (!device_id_valid(id))
		return -EINVAL;
	if (position(reg, id, &pos))
		return -EEXIST;
	if (reg->n == reg->cap) {
		reg->cap = reg->cap ? 2 * reg->cap : 16;
		reg->devs = xreallocarray(reg->devs, reg->cap, sizeof(*reg->devs));
	}
	dev = xcalloc(1, sizeof(*dev));
	memcpy(dev->id, id, strlen(id) + 1);
	dev->state = DEVICE_ACTIVE;
	dev->enabled = true;
	dev->upstream = DEVICE_UPSTREAM_NONE;
	dev->refs = 1;
	dev->reg = reg;
	memmove(&reg->devs[pos + 1], &reg->devs[pos], (reg->n - pos) * sizeof(*reg->devs));
	reg->devs[pos] = dev;
	reg->n++;
	if (out)
		*out = dev;
	return 0;
}

struct device *
device_find(const struct device_registry *reg, const char *id)
{
	size_t pos;

	return position(reg, id, &pos) ? reg->devs[pos] : NULL;
}

void
device_remove(struct device_registry *reg, struct device *dev)
{
	size_t pos;

	if (!dev || dev->reg != reg || !position(reg, dev->id, &pos) || reg->devs[pos] != dev)
		return;
	memmove(&reg->devs[pos], &reg->devs[pos + 1], (reg->n - pos - 1) * sizeof(*reg->devs));
	reg->n--;
	dev->reg = NULL;
	dev->state = DEVICE_GONE;
	for (struct remove_watcher *w = reg->on_remove; w; w = w->next)
		w->fn(dev, w->data);
	device_unref(dev);
}

void
device_registry_on_remove(struct device_registry *reg, void (*fn)(struct device *dev, void *data),
                          void *data)
{
	struct remove_watcher *w = xmalloc(sizeof(*w)), **tail = &reg->on_remove;

	*w = (struct remove_watcher){.fn = fn, .data = data};
	while (*tail)
		tail = &(*tail)->next;
	*tail = w;
}

void
device_registry_off_remove(struct device_registry *reg, void (*fn)(struct device *dev, void *data),
                           void *data)
{
	for (struct remove_watcher **w = &reg->on_remove; *w; w = &(*w)->next) {
		if ((*w)->fn == fn && (*w)->data == data) {
			struct remove_watcher *gone = *w;

			*w = gone->next;
			free(gone);
			return;
		}
	}
}

struct device *
device_ref(struct device *dev)
{
	if (dev)
		dev->refs++;
	return dev;
}

void
device_unref(struct device *dev)
{
	if (!dev || --dev->refs > 0)
		return;
	/* A module that still hangs state on it would read freed memory next. */
	assert(!dev->ks && !dev->spool && !dev->flow && !dev->mqtt && !dev->enrol);
	free(dev);
}

size_t
device_count(const struct device_registry *reg)
{
	return reg->n;
}

struct device *
device_at(const struct device_registry *reg, size_t i)
{
	return i < reg->n ? reg->devs[i] : NULL;
}

bool
device_usable(const struct device *dev)
{
	return dev->state == DEVICE_ACTIVE && dev->enabled;
}

void
device_set_upstream(struct device *dev, enum device_upstream st)
{
	enum device_upstream was = dev->upstream;

	if (st == was)
		return;
	dev->upstream = st;
	if (dev->reg && dev->reg->on_upstream)
		dev->reg->on_upstream(dev, was, dev->reg->on_upstream_data);
}

void
device_registry_on_upstream(struct device_registry *reg,
                            void (*fn)(struct device *dev, enum device_upstream was, void *data),
                            void *data)
{
	reg->on_upstream = fn;
	reg->on_upstream_data = data;
}
