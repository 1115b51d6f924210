/*
 * Imported (node --import) into a gateway process by test/reliability/h-lifecycle.test.ts, so the
 * product needs no test-only route: SIGUSR2 makes a timer throw, an exception nothing catches.
 */
process.on('SIGUSR2', () => {
  setTimeout(() => {
    throw new Error('injected fault: thrown from a timer on SIGUSR2')
  }, 0)
})
