import { randomBytes } from 'node:crypto'
import type { Stats } from 'node:fs'
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { IMAGE_NAME, type ImageStore, type StoreUsage } from './store.js'

const DEFAULT_SWEEP_EVERY_MS = 60_000
/** A temp file this old was left by a put that crashed half way (a put takes milliseconds). */
const STALE_TEMP_MS = 10 * 60_000
const TEMP_PREFIX = '.tmp-'

/**
 * mkdir accepts a directory that already exists, whoever made it: one in a shared place (/tmp)
 * could belong to another user, who could then read or replace the images.
 */
async function checkPrivate(directory: string): Promise<void> {
  const info = await stat(directory)
  const uid = process.getuid?.()
  if (uid !== undefined && info.uid !== uid) throw new Error(`image directory ${directory} belongs to another user (uid ${info.uid})`)
  if ((info.mode & 0o022) !== 0) throw new Error(`image directory ${directory} is writable by other users`)
}

export interface DirectoryImageStoreOptions {
  /** How often the timer deletes expired images and stale temp files. */
  sweepEveryMs?: number
  /** The clock, in ms since the epoch; tests move it. */
  now?: () => number
}

/**
 * Hosted images of one instance, as files in a directory: one file per image, named by the image
 * name, whose mtime is its expiry. Keeping the expiry in the file itself needs no index or side
 * file, so nothing can disagree with the images and everything survives a restart.
 */
export class DirectoryImageStore implements ImageStore {
  readonly kind = 'directory' as const
  private readonly timer: NodeJS.Timeout
  private sweeping = false

  private constructor(
    private readonly directory: string,
    private readonly now: () => number,
    sweepEveryMs: number
  ) {
    // Unref'd: a store left open must not keep the process alive.
    this.timer = setInterval(() => void this.timedSweep(), sweepEveryMs).unref()
  }

  /** Creates the directory (and its parents) if needed, private to this user, and starts the sweep timer. */
  static async open(directory: string, options: DirectoryImageStoreOptions = {}): Promise<DirectoryImageStore> {
    const sweepEveryMs = options.sweepEveryMs ?? DEFAULT_SWEEP_EVERY_MS
    if (!Number.isFinite(sweepEveryMs) || sweepEveryMs <= 0) throw new RangeError('sweepEveryMs must be a positive number of ms')
    await mkdir(directory, { recursive: true, mode: 0o700 })
    await checkPrivate(directory)
    return new DirectoryImageStore(directory, options.now ?? Date.now, sweepEveryMs)
  }

  /**
   * Written to a temp file in the same directory and renamed into place, so that a reader sees the
   * whole image or none. The file is fsynced with its mtime before the rename: after a crash the
   * name never points at a truncated image.
   */
  async put(name: string, bytes: Buffer, expiresAt: number): Promise<void> {
    const path = this.pathOf(name)
    if (expiresAt <= this.now()) return
    const temp = join(this.directory, `${TEMP_PREFIX}${randomBytes(12).toString('hex')}`)
    try {
      const handle = await open(temp, 'wx', 0o600)
      try {
        await handle.writeFile(bytes)
        await handle.utimes(new Date(this.now()), new Date(expiresAt))
        await handle.sync()
      } finally {
        await handle.close()
      }
      await rename(temp, path)
    } catch (error) {
      await rm(temp, { force: true })
      throw error
    }
  }

  async get(name: string): Promise<Buffer | null> {
    const path = this.pathOf(name)
    let handle
    try {
      handle = await open(path, 'r')
    } catch (error) {
      if (isMissing(error)) return null
      throw error
    }
    // Stat and read through one descriptor, so both are of the same file.
    try {
      const stats = await handle.stat()
      if (!stats.isFile()) return null
      if (expiryOf(stats) <= this.now()) {
        await removeQuietly(path)
        return null
      }
      return await handle.readFile()
    } finally {
      await handle.close()
    }
  }

  async usage(): Promise<StoreUsage> {
    return this.sweep()
  }

  async close(): Promise<void> {
    clearInterval(this.timer)
  }

  /**
   * The timer's sweep: skipped while one is still running (a large directory on a slow disk), and
   * its failures dropped, because nobody awaits it; usage() runs the same sweep and reports them.
   */
  private async timedSweep(): Promise<void> {
    if (this.sweeping) return
    this.sweeping = true
    try {
      await this.sweep()
    } catch {
      // See above.
    } finally {
      this.sweeping = false
    }
  }

  /**
   * Deletes expired images and stale temp files, and counts the images left. Other files and
   * directories are not ours: left alone and not counted. Files that another sweep, a get or
   * another instance deletes meanwhile are skipped.
   */
  private async sweep(): Promise<StoreUsage> {
    const now = this.now()
    const left: StoreUsage = { images: 0, bytes: 0 }
    for (const entry of await readdir(this.directory, { withFileTypes: true })) {
      if (!entry.isFile()) continue
      const isTemp = entry.name.startsWith(TEMP_PREFIX)
      if (!isTemp && !IMAGE_NAME.test(entry.name)) continue
      const path = join(this.directory, entry.name)
      let stats: Stats
      try {
        stats = await stat(path)
      } catch (error) {
        if (isMissing(error)) continue
        throw error
      }
      if (isTemp) {
        // A temp file's mtime is already the image's expiry once utimes ran; its ctime, which
        // utimes cannot set, is when it was last written or touched.
        if (now - stats.ctimeMs > STALE_TEMP_MS) await removeQuietly(path)
      } else if (expiryOf(stats) <= now) {
        await removeQuietly(path)
      } else {
        left.images += 1
        left.bytes += stats.size
      }
    }
    return left
  }

  /** Names come from our code; this refuses anything that could leave the directory. */
  private pathOf(name: string): string {
    if (!IMAGE_NAME.test(name)) throw new TypeError(`not an image name: ${JSON.stringify(name)}`)
    return join(this.directory, name)
  }
}

/**
 * The expiry put stored as the mtime, to the ms. utimes goes through a float of seconds and
 * can come back a fraction of a ms off, which must not move the expiry across `now`.
 */
function expiryOf(stats: Stats): number {
  return Math.round(stats.mtimeMs)
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | null)?.code === 'ENOENT'
}

/** Unlink that ignores a file already gone: a concurrent get, sweep or other instance deleted it. */
async function removeQuietly(path: string): Promise<void> {
  try {
    await unlink(path)
  } catch (error) {
    if (!isMissing(error)) throw error
  }
}
