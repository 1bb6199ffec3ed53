package handshake

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"

	"github.com/stt-tun/stt-tun/stt/wire"
	"golang.org/x/crypto/chacha20poly1305"
)

// SealRefusal appends the refusal of docs/protocol.md section 4.8 to out: the DATA frame
// a responder sends instead of FINAL when it verified an AUTH_PROOF (res is its Result)
// but will not make the session, with a refusal code (wire.CodeNotPeer,
// wire.CodePinMismatch). It is sealed with the responder's key of that handshake,
// counter 0, stream 0, to the initiator's index, so only that initiator can open it and
// no one else can forge one. The caller sends it to where the AUTH_PROOF came from and
// forgets the keys.
func SealRefusal(out []byte, res Result, code uint16) ([]byte, error) {
	if !wire.IsRefusalCode(code) || res.RemoteIndex == 0 || res.Initiator {
		return nil, fmt.Errorf("%w: refusal needs a responder's Result and a refusal code", ErrBadArgument)
	}
	var aead cipher.AEAD
	var err error
	switch res.Cipher {
	case wire.CipherChaCha20Poly1305:
		aead, err = chacha20poly1305.New(res.SendKey[:])
	case wire.CipherAES256GCM:
		var b cipher.Block
		if b, err = aes.NewCipher(res.SendKey[:]); err == nil {
			aead, err = cipher.NewGCM(b)
		}
	default:
		err = fmt.Errorf("%w: cipher %d", ErrBadArgument, res.Cipher)
	}
	if err != nil {
		return nil, err
	}
	var hdr [wire.HeaderLen]byte
	wire.PutHeader(hdr[:], wire.Header{Stream: wire.ControlStream, Receiver: res.RemoteIndex, Counter: 0})
	var nonce [12]byte
	wire.Nonce(&nonce, 0)
	out = append(out, hdr[:]...)
	return aead.Seal(out, nonce[:], wire.AppendRefusal(nil, code), hdr[:]), nil
}
