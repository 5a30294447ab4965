import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IApi } from './types';

/** Call `{baseUrl}tfgpu/api/{endPoint}` and return its JSON body; HTTP errors throw `ResponseError`. */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'tfgpu', 'api', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (e.g. a proxy's HTML error page): the status line makes a better message.
  }
  if (!response.ok) {
    const message = data?.message ?? `${response.status} ${response.statusText}`.trim();
    throw new ServerConnection.ResponseError(response, message);
  }
  return data as T;
}

/** The calls the models make (`IApi`), bound to this server's settings. */
export function serverApi(settings: ServerConnection.ISettings): IApi {
  return {
    request: (endPoint, init) => requestAPI(endPoint, init, settings),
    connect: () => {
      let url = URLExt.join(settings.wsUrl, 'tfgpu', 'api', 'stream');
      if (settings.appendToken && settings.token) {
        url += `?token=${encodeURIComponent(settings.token)}`;
      }
      return new settings.WebSocket(url);
    }
  };
}
