import { randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, unlink, type FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'

/**
 * Bytes kept so they can be sent later (an upload held until its model is known): in memory up to
 * a cap, then in a temporary file. The file is unlinked as soon as it is opened and used through
 * its descriptor, so it is gone even if the process dies; `dispose()` closes the descriptor.
 */
export class ByteSpool {
  private readonly memoryCapBytes: number
  private readonly directory: string
  private readonly memory: Buffer[] = []
  private memoryBytes = 0
  private fileBytes = 0
  private file: Promise<FileHandle> | null = null
  private lastWrite: Promise<void> = Promise.resolve()
  private disposed = false

  constructor(memoryCapBytes: number, directory: string = tmpdir()) {
    this.memoryCapBytes = memoryCapBytes
    this.directory = directory
  }

  get size(): number {
    return this.memoryBytes + this.fileBytes
  }

  /**
   * Keeps the bytes. In memory that is done on return (undefined); on disk the promise says when,
   * and callers stop reading their source meanwhile.
   */
  append(chunk: Buffer): Promise<void> | undefined {
    if (this.disposed) throw new Error('spool disposed')
    if (this.file === null && this.memoryBytes + chunk.length <= this.memoryCapBytes) {
      this.memory.push(chunk)
      this.memoryBytes += chunk.length
      return undefined
    }
    const write = this.appendToFile(chunk)
    this.lastWrite = write.catch(() => undefined)
    return write
  }

  /** Resolves when every append so far is on disk (or failed: the append's own promise tells). */
  settled(): Promise<void> {
    return this.lastWrite
  }

  private async appendToFile(chunk: Buffer): Promise<void> {
    this.file ??= this.openFile()
    const handle = await this.file
    const position = this.fileBytes
    this.fileBytes += chunk.length
    let written = 0
    while (written < chunk.length) {
      const { bytesWritten } = await handle.write(chunk, written, chunk.length - written, position + written)
      written += bytesWritten
    }
  }

  private async openFile(): Promise<FileHandle> {
    const path = join(this.directory, `image-gateway-${randomBytes(12).toString('hex')}.spool`)
    const handle = await open(path, 'wx+', 0o600)
    try {
      await unlink(path)
    } catch (err) {
      await handle.close().catch(() => undefined)
      throw err
    }
    return handle
  }

  /** The kept bytes from `start` to `end` (exclusive), in order. */
  read(start: number, end: number): Readable {
    const memoryChunks: Buffer[] = []
    let offset = 0
    for (const chunk of this.memory) {
      const from = Math.max(start, offset)
      const to = Math.min(end, offset + chunk.length)
      if (from < to) memoryChunks.push(chunk.subarray(from - offset, to - offset))
      offset += chunk.length
    }
    const fileStart = Math.max(start - this.memoryBytes, 0)
    const fileEnd = Math.min(end - this.memoryBytes, this.fileBytes)
    const file = this.file
    async function* chunks(): AsyncGenerator<Buffer> {
      yield* memoryChunks
      if (file === null || fileStart >= fileEnd) return
      const handle = await file
      const stream = createReadStream('', { fd: handle, start: fileStart, end: fileEnd - 1, autoClose: false })
      yield* stream as AsyncIterable<Buffer>
    }
    return Readable.from(chunks(), { objectMode: false })
  }

  async dispose(): Promise<void> {
    if (this.disposed) return
    this.disposed = true
    this.memory.length = 0
    const file = this.file
    this.file = null
    // The file may never have opened (EMFILE, ENOSPC): that failure was the caller's to see.
    const handle = file === null ? null : await file.catch(() => null)
    await handle?.close().catch(() => undefined)
  }
}
