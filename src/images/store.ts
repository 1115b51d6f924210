/**
 * Where hosted images live until their links expire (docs/images.md): a local directory (one
 * instance) or Redis (every instance). An image is named `{id}.{ext}`; the name's extension says its
 * content type. Expired images are deleted from the backend, not only hidden.
 */
export const IMAGE_CONTENT_TYPES = {
  png: 'image/png',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
  gif: 'image/gif'
} as const

export type ImageExtension = keyof typeof IMAGE_CONTENT_TYPES

/** `{id}.{ext}`: a random id (base64url, 16 to 64 characters) and a known extension. */
export const IMAGE_NAME = /^[A-Za-z0-9_-]{16,64}\.(png|jpeg|webp|gif)$/

export interface StoreUsage {
  /** Images kept now (not yet expired). */
  images: number
  bytes: number
}

export interface ImageStore {
  readonly kind: 'directory' | 'redis'
  /** Keeps `bytes` under `name` until `expiresAt` (ms since the epoch); then they are deleted. */
  put(name: string, bytes: Buffer, expiresAt: number): Promise<void>
  /** The image's bytes; null when there is none under that name, or it has expired. */
  get(name: string): Promise<Buffer | null>
  /** Deletes what has expired, then counts what is left. */
  usage(): Promise<StoreUsage>
  /** Stops the store's timers; the images stay. */
  close(): Promise<void>
}
