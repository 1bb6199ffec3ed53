package udp

import (
	"strconv"
	"syscall"
)

// MessageTooBigError reports datagrams of a Send that were larger than the interface's
// MTU allows (EMSGSIZE: a socket of NewPMTUProbe never fragments one) and were not
// sent; the Send's other datagrams were.
type MessageTooBigError struct{ Dropped int }

func (e *MessageTooBigError) Error() string {
	return "sendmmsg: " + strconv.Itoa(e.Dropped) + " datagram(s) larger than the interface's MTU not sent"
}

// Unwrap makes the error match EMSGSIZE.
func (e *MessageTooBigError) Unwrap() error { return syscall.EMSGSIZE }
