/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_ATOMICFILE_H
#define GW_ATOMICFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * Replacing a small file so that a power loss leaves either the old content or the new one,
 * whole: the new content goes to ".NAME.tmp" in the same folder, is made durable, and is
 * renamed over NAME; then the folder is synced so that the rename is durable too. A crash can
 * leave ".NAME.tmp" behind: whoever reads the folder at start removes it. dir is the folder's
 * path for messages; every failure is logged and returned as -errno, the temporary file gone.
 */

/* The whole sequence: the new content is durable when it returns 0. */
int atomic_write(int dirfd, const char *dir, const char *name, const void *data, size_t len,
                 mode_t mode);

/*
 * The two halves, for a caller that batches the syncs of many folders (the spool: one syncfs
 * instead of an fsync per device). atomic_stage() writes the temporary file, fsync'd only if
 * sync (else the caller syncs the file system before installing); atomic_install() renames it
 * over name and leaves the folder's fsync to the caller.
 */
int atomic_stage(int dirfd, const char *dir, const char *name, const void *data, size_t len,
                 mode_t mode, bool sync);
int atomic_install(int dirfd, const char *dir, const char *name);
/* Removes what atomic_stage() left: a failed batch, or a crash (at start). */
void atomic_discard(int dirfd, const char *name);

#endif
