/** Following the server's policy changes (the stream's `policies` member); pure. */

import { IPolicyChanges } from './types';

/** What one stream message says about policy changes. */
export interface IPolicyChangeNotice {
  changes: IPolicyChanges;
  /** The server restarted since the last message (its epoch differs): revisions start again. */
  restarted: boolean;
  /** A policy changed since the last message (its revision or epoch differs). */
  moved: boolean;
}

/**
 * Whether a view that shows `path` as of `revision` must read it again after `changes`:
 * a newer change names it, some changes were missed (older than those kept), or the server
 * restarted.
 */
export function needsReload(
  path: string | null,
  revision: number | null,
  notice: IPolicyChangeNotice
): boolean {
  if (path === null) {
    return false;
  }
  if (notice.restarted || revision === null) {
    return true;
  }
  const { changes } = notice;
  if (changes.revision <= revision) {
    return false;
  }
  const oldest = changes.changes.length ? changes.changes[0].revision : Infinity;
  if (oldest > revision + 1) {
    return true;
  }
  return changes.changes.some(c => c.revision > revision && c.path === path);
}

/** Remembers the server's epoch and revision across messages, to tell a restart or a change. */
export class PolicyChangeTracker {
  /** The notice for one message's `policies`. */
  update(changes: IPolicyChanges): IPolicyChangeNotice {
    const first = this._epoch === null;
    const restarted = !first && this._epoch !== changes.epoch;
    const moved = restarted || (!first && this._revision !== changes.revision);
    this._epoch = changes.epoch;
    this._revision = changes.revision;
    return { changes, restarted, moved };
  }

  private _epoch: string | null = null;
  private _revision = 0;
}
