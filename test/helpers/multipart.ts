export type Part =
  | { name: string; value: string }
  | { name: string; filename: string; contentType?: string; data: Buffer }

/** A multipart/form-data body built byte by byte, so tests know exactly what the client sent. */
export function buildMultipart(parts: Part[], boundary = 'test-boundary-7f3a9c'): { body: Buffer; contentType: string } {
  const pieces: Buffer[] = []
  for (const part of parts) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${part.name}"`
    if ('filename' in part) {
      head += `; filename="${part.filename}"\r\nContent-Type: ${part.contentType ?? 'image/png'}`
    }
    pieces.push(Buffer.from(`${head}\r\n\r\n`), 'data' in part ? part.data : Buffer.from(part.value), Buffer.from('\r\n'))
  }
  pieces.push(Buffer.from(`--${boundary}--\r\n`))
  return { body: Buffer.concat(pieces), contentType: `multipart/form-data; boundary=${boundary}` }
}
