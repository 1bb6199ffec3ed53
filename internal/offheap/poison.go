//go:build offheap_poison

package offheap

// Poisoning is true in a build with the offheap_poison tag: the loops overwrite each
// batch's bytes once they are done with it (Poison), and a released mapping is made
// inaccessible rather than given back, so that a reference kept past its batch reads
// 0xAA, and one kept past the release faults, every time instead of by chance.
const Poisoning = true
