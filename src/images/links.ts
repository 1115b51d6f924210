import { createHmac, timingSafeEqual } from 'node:crypto'

/** Where hosted images are served, under the gateway's public base URL. */
export const IMAGE_FILES_PATH = '/v1/images/files'

export type LinkCheck = 'valid' | 'expired' | 'invalid'

/**
 * Signed, expiring links to hosted images: `{base}/v1/images/files/{name}?expires={s}&sig={mac}`.
 * The signature covers the name and the expiry, so neither can be changed; any instance with the
 * same secret checks any link, with nothing shared but the secret.
 */
export class LinkSigner {
  private readonly secret: Buffer

  constructor(
    secret: string | Buffer,
    /** The public base URL (no trailing slash needed); read per link, as a default one is known only once listening. */
    private readonly baseUrl: () => string
  ) {
    this.secret = Buffer.isBuffer(secret) ? secret : Buffer.from(secret, 'utf8')
  }

  private mac(name: string, expires: string): Buffer {
    return createHmac('sha256', this.secret).update(`${name}\n${expires}`).digest()
  }

  /** The link to `name`, good until `expiresAt` (ms since the epoch, rounded up to a second). */
  link(name: string, expiresAt: number): string {
    const expires = String(Math.ceil(expiresAt / 1000))
    const sig = this.mac(name, expires).toString('base64url')
    return `${this.baseUrl().replace(/\/+$/, '')}${IMAGE_FILES_PATH}/${name}?expires=${expires}&sig=${sig}`
  }

  /** Whether a link's parts were signed here, and are still in date. The signature is judged first, in constant time. */
  check(name: string, expires: unknown, sig: unknown, now: number): LinkCheck {
    if (typeof expires !== 'string' || !/^[0-9]{1,12}$/.test(expires) || typeof sig !== 'string') return 'invalid'
    // Compared as text: base64url decoding forgives stray characters, and one link has one spelling.
    const given = Buffer.from(sig, 'utf8')
    const expected = Buffer.from(this.mac(name, expires).toString('base64url'), 'utf8')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return 'invalid'
    return Number(expires) * 1000 <= now ? 'expired' : 'valid'
  }
}
