import { ISignal, Signal } from '@lumino/signaling';

import { IPolicyChangeNotice, needsReload } from './policychanges';
import { IApi, IConfig, IPolicyDescription, Policy } from './types';

/** How the form edits one policy field. */
export type FieldKind = 'boolean' | 'integer' | 'number' | 'string' | 'enum' | 'devices' | 'list';

/** One policy field, read from the policy JSON schema. */
export interface IPolicyField {
  name: string;
  title: string;
  description: string;
  kind: FieldKind;
  /** Choices of an `enum` field (without null); a `devices` field's named modes (e.g. "auto"). */
  options?: (string | number)[];
  minimum?: number;
  maximum?: number;
  /** What a `string` field's text must match. */
  pattern?: string;
  /** A `devices` or `list` field's items: GPU indices (their bounds), names (their pattern). */
  items?: {
    index?: { minimum?: number; maximum?: number };
    name?: { pattern?: string };
  };
  /** The most items of a `devices` or `list` field. */
  maxItems?: number;
  /** Whether each item of a `devices` or `list` field may be there once only. */
  uniqueItems?: boolean;
}

/** Words for a `devices` field's named modes. */
export const DEVICE_MODES: Record<string, string> = {
  auto: 'Auto: the least busy GPUs at kernel start'
};

/** The fields the form always shows; the others sit under "More settings". */
export const PRIMARY_FIELDS = [
  'memory_growth',
  'memory_limit_mb',
  'devices',
  'gpu_count',
  'allocator'
];

/** The limits an admin puts on one field, as the form shows them. */
export interface IFieldLimit {
  maximum?: number;
  /** GPUs a `devices` field may name (null: any). */
  allowed?: (number | string)[] | null;
  /** The value the admin forces. */
  forced?: unknown;
  /** A sentence naming the cap. */
  note?: string;
}

/** The form's fields, one per schema property whose type it can edit, in schema order. */
export function policyFields(schema: { properties?: Record<string, any> }): IPolicyField[] {
  const fields: IPolicyField[] = [];
  for (const [name, prop] of Object.entries(schema.properties ?? {})) {
    // A property is one schema or a choice of schemas (e.g. null | "auto" | [GPU, ...]).
    const branches: any[] = prop.anyOf ?? prop.oneOf ?? [prop];
    const types: string[] = branches
      .flatMap(b => [b.type ?? []].flat())
      .filter((t: string) => t !== 'null');
    const consts = branches.filter(b => 'const' in b).map(b => b.const);
    const field = {
      name,
      title: prop.title ?? name.replace(/_/g, ' '),
      description: prop.description ?? '',
      minimum: prop.minimum,
      maximum: prop.maximum,
      pattern: prop.pattern
    };
    if (Array.isArray(prop.enum)) {
      fields.push({
        ...field,
        kind: 'enum',
        options: prop.enum.filter((v: unknown) => v !== null)
      });
    } else if (types.includes('array')) {
      const array = branches.find(b => [b.type].flat().includes('array'));
      // An item is one schema or a choice of them (a GPU index or a GPU's UUID).
      const items: any[] = array.items?.anyOf ?? array.items?.oneOf ?? [array.items ?? {}];
      const index = items.find(i => [i.type].flat().includes('integer'));
      const named = items.find(i => i.type === undefined || [i.type].flat().includes('string'));
      fields.push({
        ...field,
        // Items that may be integers are GPU indices: the form ticks GPUs.
        kind: index ? 'devices' : 'list',
        options: consts,
        items: {
          index: index && { minimum: index.minimum, maximum: index.maximum },
          name: named && { pattern: named.pattern }
        },
        maxItems: array.maxItems,
        uniqueItems: array.uniqueItems
      });
    } else if (
      ['boolean', 'integer', 'number', 'string'].includes(types[0]) &&
      types.length === 1
    ) {
      fields.push({ ...field, kind: types[0] as FieldKind });
    }
  }
  return fields;
}

/** Whether `n` is within the bounds a field or its items have. */
function inBounds(n: number, bounds: { minimum?: number; maximum?: number }): boolean {
  return (bounds.minimum ?? -Infinity) <= n && n <= (bounds.maximum ?? Infinity);
}

/** Whether `text` matches `pattern` (none: any text). */
function matches(text: string, pattern: string | undefined): boolean {
  return pattern === undefined || new RegExp(pattern, 'u').test(text);
}

/**
 * Whether the form can show and send `value` for `field`, as `policyFields` read the field's
 * type, choices, named modes and bounds from the schema; null ("not set") always. The form
 * lets the server judge what it sends: this is the lab's reading of the schema, not a check.
 */
export function fieldAccepts(field: IPolicyField, value: unknown): boolean {
  if (value === null) {
    return true;
  }
  const options: unknown[] = field.options ?? [];
  switch (field.kind) {
    case 'boolean':
      return typeof value === 'boolean';
    case 'enum':
      return options.includes(value);
    case 'integer':
      return Number.isInteger(value) && inBounds(value as number, field);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value) && inBounds(value, field);
    case 'string':
      return typeof value === 'string' && matches(value, field.pattern);
    case 'devices':
    case 'list': {
      if (!Array.isArray(value)) {
        return options.includes(value);
      }
      const { index, name } = field.items ?? {};
      const item = (v: unknown) =>
        typeof v === 'string'
          ? !!name && matches(v, name.pattern)
          : !!index && Number.isInteger(v) && inBounds(v as number, index);
      return (
        value.length <= (field.maxItems ?? Infinity) &&
        (!field.uniqueItems || new Set(value).size === value.length) &&
        value.every(item)
      );
    }
  }
}

/** What the admin's config allows for a field (caps are named in the server's config). */
export function fieldLimit(field: IPolicyField, config: IConfig | null): IFieldLimit {
  if (!config) {
    return {};
  }
  switch (field.name) {
    case 'memory_limit_mb':
      return config.max_memory_mb === null
        ? {}
        : {
            maximum: Math.min(field.maximum ?? Infinity, config.max_memory_mb),
            note: `Admin cap: at most ${config.max_memory_mb} MiB`
          };
    case 'devices':
      return config.allowed_devices === null
        ? {}
        : {
            allowed: config.allowed_devices,
            note: `Admin allows GPUs ${config.allowed_devices.join(', ')}`
          };
    case 'memory_growth':
      return config.force_memory_growth
        ? { forced: true, note: 'The admin turns memory growth on for every kernel' }
        : {};
    default:
      return {};
  }
}

/** The PUT body for a draft: fields left empty are left out ("no opinion"). */
export function policyBody(draft: Policy): Policy {
  return Object.fromEntries(
    Object.entries(draft).filter(([, v]) => v !== null && v !== undefined && v !== '')
  );
}

/** A field's value as the form shows it in a sentence. */
export function describeValue(field: IPolicyField, value: unknown): string {
  if (value === null || value === undefined) {
    return field.kind === 'devices' ? 'every allowed GPU' : 'not set';
  }
  if (field.kind === 'devices') {
    if (!Array.isArray(value)) {
      return DEVICE_MODES[String(value)] ?? String(value);
    }
    return value.length ? `GPU ${value.join(', ')}` : 'CPU only';
  }
  if (typeof value === 'boolean') {
    return value ? 'on' : 'off';
  }
  if (field.name.endsWith('_mb')) {
    return `${value} MiB`;
  }
  return Array.isArray(value) ? value.join(', ') : String(value);
}

/** `a/b c.ipynb` -> `a/b%20c.ipynb` (each segment encoded, slashes kept). */
export function policyUrl(path: string): string {
  return 'policies/' + path.split('/').map(encodeURIComponent).join('/');
}

/** The current notebook's policy (GET/PUT/DELETE `policies/{path}`) and the admin config. */
export class PolicyModel {
  /** Read and write policies through `api`. */
  constructor(api: IApi) {
    this._api = api;
  }

  /** Emitted when the notebook, its policy, the config or the error changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The notebook whose policy is shown (relative to the server root). */
  get path(): string | null {
    return this._path;
  }

  /** The notebook's own and effective policy, once loaded. */
  get description(): IPolicyDescription | null {
    return this._description;
  }

  /** The admin settings in force, once loaded. */
  get config(): IConfig | null {
    return this._config;
  }

  /** The server's words for the last failure. */
  get error(): string | null {
    return this._error;
  }

  /** Show another notebook's policy (null: none). */
  async setPath(path: string | null): Promise<void> {
    if (path === this._path) {
      return;
    }
    this._path = path;
    this._description = null;
    this._error = null;
    this._changed.emit();
    await this.load();
  }

  /** (Re)load the config and the current notebook's policy. */
  async load(): Promise<void> {
    const path = this._path;
    await this._run(async () => {
      this._config ??= await this._api.request<IConfig>('config');
      const description = path
        ? await this._api.request<IPolicyDescription>(policyUrl(path))
        : null;
      if (path === this._path) {
        this._description = description;
      }
    });
  }

  /** Read the policy again if a change on the server concerns it (a stream notice). */
  async follow(notice: IPolicyChangeNotice): Promise<void> {
    if (notice.restarted) {
      this._config = null; // the admin may have restarted the server with new caps
    }
    if (needsReload(this._path, this._description?.revision ?? null, notice)) {
      await this.load();
    }
  }

  /** Store `draft` as the notebook's policy; false (and `error`) when the server refuses. */
  async save(draft: Policy): Promise<boolean> {
    const path = this._path;
    if (!path) {
      return false;
    }
    return this._run(async () => {
      const init = { method: 'PUT', body: JSON.stringify(policyBody(draft)) };
      const description = await this._api.request<IPolicyDescription>(policyUrl(path), init);
      if (path === this._path) {
        this._description = description;
      }
    });
  }

  /** Remove the notebook's own policy, so the admin default applies again. */
  async reset(): Promise<boolean> {
    const path = this._path;
    if (!path) {
      return false;
    }
    const done = await this._run(() =>
      this._api.request<void>(policyUrl(path), { method: 'DELETE' })
    );
    if (done) {
      await this.load();
    }
    return done;
  }

  private async _run(action: () => Promise<unknown>): Promise<boolean> {
    try {
      await action();
      this._error = null;
      return true;
    } catch (error) {
      this._error = error instanceof Error ? error.message : String(error);
      return false;
    } finally {
      this._changed.emit();
    }
  }

  private _api: IApi;
  private _changed = new Signal<this, void>(this);
  private _config: IConfig | null = null;
  private _description: IPolicyDescription | null = null;
  private _error: string | null = null;
  private _path: string | null = null;
}
