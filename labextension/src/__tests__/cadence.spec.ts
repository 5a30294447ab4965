import { describeCadence } from '../cadence';
import { ISnapshot } from '../types';

function snapshot(cadence?: ISnapshot['cadence']): ISnapshot {
  return { timestamp: 1, simulated: false, gpus: [], cadence };
}

describe('describeCadence', () => {
  it('says nothing while figures come at the configured interval', () => {
    expect(describeCadence(null)).toBeNull();
    expect(describeCadence(snapshot())).toBeNull();
    expect(
      describeCadence(snapshot({ interval: 1, configured_interval: 1, stretch_reason: null }))
    ).toBeNull();
  });

  it("gives the server's reason while the budget stretches them", () => {
    const reason = 'GPU figures refresh every 5.0 s instead of 1 s: ...';
    expect(
      describeCadence(snapshot({ interval: 5, configured_interval: 1, stretch_reason: reason }))
    ).toBe(reason);
  });

  it('still says how often when the server gives no reason', () => {
    expect(
      describeCadence(snapshot({ interval: 2.5, configured_interval: 1, stretch_reason: null }))
    ).toBe('GPU figures refresh every 2.5 s instead of 1 s.');
  });
});
