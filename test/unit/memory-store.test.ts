import t from 'tap'
import { MemoryKeyStore } from '../../src/keys/memory-store.js'
import { keyStoreSuite } from '../helpers/key-store-suite.js'

keyStoreSuite(t, async () => {
  const store = new MemoryKeyStore()
  return { store, cleanup: () => store.close() }
})
