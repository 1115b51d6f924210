import t from 'tap'
import { LinkSigner } from '../../src/images/links.js'

const NAME = 'AbCdEfGhIjKlMnOpQrStUv.png'
const T0 = Date.UTC(2031, 0, 1)

function parts(link: string): { path: string; expires: string; sig: string } {
  const url = new URL(link)
  return { path: url.pathname, expires: url.searchParams.get('expires') ?? '', sig: url.searchParams.get('sig') ?? '' }
}

t.test('a link checks as valid until its expiry, then as expired', async (t) => {
  const signer = new LinkSigner('s'.repeat(32), () => 'https://gw.example.test/')
  const link = signer.link(NAME, T0 + 1500)
  const { path, expires, sig } = parts(link)
  t.equal(path, `/v1/images/files/${NAME}`, 'no double slash after a base with a trailing one')
  t.equal(expires, String(Math.ceil((T0 + 1500) / 1000)), 'expiry rounded up to whole seconds')
  t.equal(signer.check(NAME, expires, sig, T0), 'valid')
  t.equal(signer.check(NAME, expires, sig, Number(expires) * 1000 - 1), 'valid')
  t.equal(signer.check(NAME, expires, sig, Number(expires) * 1000), 'expired')
})

t.test('anything changed, or another secret, is invalid', async (t) => {
  const signer = new LinkSigner('s'.repeat(32), () => 'http://gw')
  const { expires, sig } = parts(signer.link(NAME, T0 + 60_000))
  const other = new LinkSigner('t'.repeat(32), () => 'http://gw')
  t.equal(other.check(NAME, expires, sig, T0), 'invalid', 'another secret')
  t.equal(signer.check(NAME.replace('.png', '.gif'), expires, sig, T0), 'invalid', 'another name')
  t.equal(signer.check(NAME, String(Number(expires) + 1), sig, T0), 'invalid', 'another expiry')
  t.equal(signer.check(NAME, expires, `${sig}A`, T0), 'invalid', 'a longer signature')
  t.equal(signer.check(NAME, expires, sig.slice(0, -1), T0), 'invalid', 'a shorter signature')
  const last = sig.at(-1) === 'A' ? 'B' : 'A'
  t.equal(signer.check(NAME, expires, `${sig.slice(0, -1)}${last}`, T0), 'invalid', 'another spelling of the last character')
  t.equal(signer.check(NAME, undefined, sig, T0), 'invalid', 'no expiry')
  t.equal(signer.check(NAME, expires, undefined, T0), 'invalid', 'no signature')
  t.equal(signer.check(NAME, [expires], sig, T0), 'invalid', 'a repeated query parameter')
  t.equal(signer.check(NAME, `${expires}.5`, sig, T0), 'invalid', 'not whole seconds')
  // An expired link with a wrong signature is invalid, not expired: nothing is told about links never made.
  t.equal(signer.check(NAME, '1', sig, T0), 'invalid')
})
