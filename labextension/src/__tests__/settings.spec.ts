import { DEFAULTS, readSettings } from '../settings';
import schema from '../settings.schema.json';

describe('settings', () => {
  it('take every default from the settings schema, and only from it', () => {
    // Given the settings schema as shipped
    const defaults = Object.fromEntries(
      Object.entries(schema.properties).map(([name, prop]) => [name, prop.default])
    );
    // Then the lab's defaults are exactly the schema's, one per setting
    expect(DEFAULTS).toEqual(defaults);
    expect(Object.values(defaults)).not.toContain(undefined);
  });

  it('read what the registry holds, a default for what it lacks', () => {
    // Given a composite with one setting changed, one null, one missing and one unknown
    const composite = { refreshInterval: 2, historySeconds: null, other: 1 };
    // When it is read
    const settings = readSettings(composite);
    // Then the changed one is used, the schema's default for the others, the unknown dropped
    expect(settings).toEqual({ ...DEFAULTS, refreshInterval: 2 });
  });
});
