/**
 * The extension's settings. Their defaults are written in one place, the settings schema
 * (`schema/plugin.json`, copied into `src/` by `npm run copy:schema`); this module reads them
 * from it.
 */

import type { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import schema from './settings.schema.json';
import { IStatusChoice } from './statustext';

/** The settings, as the schema names them. */
export interface ISettings {
  /** Seconds between background refreshes while the panel is closed. */
  refreshInterval: number;
  /** Seconds of history for the panel's sparklines. */
  historySeconds: number;
  statusBarGpus: IStatusChoice['mode'];
  statusBarIndices: number[];
  /** Percent of its memory limit at which a kernel's owner is told (0: never). */
  capWarningPercent: number;
  notifyEnforcement: boolean;
}

const { properties } = schema;

/** Each setting's default, from the schema: what applies before (or without) the registry. */
export const DEFAULTS: Readonly<ISettings> = {
  refreshInterval: properties.refreshInterval.default,
  historySeconds: properties.historySeconds.default,
  statusBarGpus: properties.statusBarGpus.default as ISettings['statusBarGpus'],
  statusBarIndices: properties.statusBarIndices.default,
  capWarningPercent: properties.capWarningPercent.default,
  notifyEnforcement: properties.notifyEnforcement.default
};

/** The settings in `composite` (the registry's, which holds every default), over `DEFAULTS`. */
export function readSettings(composite: ReadonlyPartialJSONObject): ISettings {
  const known = Object.keys(DEFAULTS).filter(
    name => composite[name] !== undefined && composite[name] !== null
  );
  return {
    ...DEFAULTS,
    ...Object.fromEntries(known.map(name => [name, composite[name]]))
  } as ISettings;
}

/** What the status bar item shows, from the settings. */
export function statusChoice(settings: ISettings): IStatusChoice {
  return { mode: settings.statusBarGpus, indices: settings.statusBarIndices };
}

/**
 * Call `apply` with the plugin's settings once they load and after each change. Without a
 * registry, or when they cannot load, the defaults stay in force.
 */
export function followSettings(
  registry: ISettingRegistry | null,
  plugin: string,
  apply: (settings: ISettings) => void
): void {
  if (!registry) {
    return;
  }
  void registry.load(plugin).then(
    loaded => {
      apply(readSettings(loaded.composite));
      loaded.changed.connect(() => apply(readSettings(loaded.composite)));
    },
    reason => console.warn('jupyter-tfgpu: could not load its settings', reason)
  );
}
