/** What to tell the user when GPU figures refresh less often than configured (pure). */

import { ISnapshot } from './types';

/** The sampler's reason, for a snapshot read on a stretched cadence; null when it is not. */
export function describeCadence(snapshot: ISnapshot | null | undefined): string | null {
  const cadence = snapshot?.cadence;
  if (!cadence || cadence.interval <= cadence.configured_interval * 1.001) {
    return null;
  }
  return (
    cadence.stretch_reason ??
    `GPU figures refresh every ${cadence.interval.toFixed(1)} s instead of ` +
      `${cadence.configured_interval} s.`
  );
}
