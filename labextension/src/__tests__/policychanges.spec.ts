import { needsReload, PolicyChangeTracker } from '../policychanges';
import { IPolicyChanges } from '../types';

function changes(revision: number, list: [number, string][], epoch = 'e1'): IPolicyChanges {
  return { epoch, revision, changes: list.map(([r, path]) => ({ revision: r, path })) };
}

describe('needsReload', () => {
  const notice = (c: IPolicyChanges, restarted = false) => ({
    changes: c,
    restarted,
    moved: true
  });

  it('reloads when a newer change names the notebook shown', () => {
    const c = changes(3, [
      [2, 'a.ipynb'],
      [3, 'b.ipynb']
    ]);
    expect(needsReload('b.ipynb', 2, notice(c))).toBe(true);
    expect(needsReload('a.ipynb', 2, notice(c))).toBe(false);
    expect(needsReload('b.ipynb', 3, notice(c))).toBe(false);
  });

  it('reloads when it missed changes older than those kept', () => {
    expect(needsReload('x.ipynb', 1, notice(changes(40, [[9, 'a.ipynb']])))).toBe(true);
    expect(needsReload('x.ipynb', 1, notice(changes(2, [])))).toBe(true);
  });

  it('reloads after a server restart, and never without a notebook', () => {
    expect(needsReload('x.ipynb', 5, notice(changes(0, []), true))).toBe(true);
    expect(needsReload(null, 0, notice(changes(3, [[3, 'x.ipynb']])))).toBe(false);
  });
});

describe('PolicyChangeTracker', () => {
  it('tells a restart by the epoch, not on the first message', () => {
    const tracker = new PolicyChangeTracker();
    expect(tracker.update(changes(4, [], 'e1')).restarted).toBe(false);
    expect(tracker.update(changes(5, [], 'e1')).restarted).toBe(false);
    expect(tracker.update(changes(0, [], 'e2')).restarted).toBe(true);
  });

  it('tells a change since the last message, not a message that repeats the revision', () => {
    const tracker = new PolicyChangeTracker();
    expect(tracker.update(changes(4, [], 'e1')).moved).toBe(false);
    expect(tracker.update(changes(4, [], 'e1')).moved).toBe(false);
    expect(tracker.update(changes(5, [], 'e1')).moved).toBe(true);
    expect(tracker.update(changes(5, [], 'e1')).moved).toBe(false);
    expect(tracker.update(changes(5, [], 'e2')).moved).toBe(true);
  });
});
