/** The `name` and `filename` of a multipart part's Content-Disposition (RFC 7578 §4.2, RFC 6266). */
export interface Disposition {
  name: string
  filename: string | null
}

function decodeExtValue(value: string): string | null {
  // RFC 5987 ext-value: charset'language'percent-encoded; browsers and SDKs use UTF-8.
  const match = /^([^']*)'[^']*'(.*)$/.exec(value)
  if (!match) return null
  try {
    return decodeURIComponent(match[2] ?? '')
  } catch {
    return null
  }
}

/** Null when the header is not `form-data` with a name. */
export function parseDisposition(header: string): Disposition | null {
  let i = header.indexOf(';')
  const type = (i === -1 ? header : header.slice(0, i)).trim().toLowerCase()
  if (type !== 'form-data') return null
  const params = new Map<string, string>()
  while (i !== -1 && i < header.length) {
    i++
    while (header[i] === ' ' || header[i] === '\t') i++
    const eq = header.indexOf('=', i)
    if (eq === -1) break
    const key = header.slice(i, eq).trim().toLowerCase()
    let value = ''
    i = eq + 1
    if (header[i] === '"') {
      i++
      while (i < header.length && header[i] !== '"') {
        if (header[i] === '\\' && i + 1 < header.length) i++
        value += header[i]
        i++
      }
      i = header.indexOf(';', i)
    } else {
      const end = header.indexOf(';', i)
      value = (end === -1 ? header.slice(i) : header.slice(i, end)).trim()
      i = end
    }
    if (!params.has(key)) params.set(key, value)
  }
  const name = params.get('name')
  if (name === undefined) return null
  const extended = params.get('filename*')
  const filename = (extended === undefined ? null : decodeExtValue(extended)) ?? params.get('filename') ?? null
  return { name, filename }
}
