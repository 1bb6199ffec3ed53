//go:build !offheap_poison

package offheap

// Poisoning is false in an ordinary build: Poison does nothing (see poison.go).
const Poisoning = false
