package handshake

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/flynn/noise"
	"github.com/stt-tun/stt-tun/stt/wire"
)

type initState uint8

const (
	stHelloSent initState = iota
	stChallengeRead
	stAuthSent
	stFailed
)

// Initiation is the initiator's side of one handshake attempt (one HELLO). A
// retransmission is a new Initiation (section 4.5: fresh e, timestamp and index). Its
// methods are safe for concurrent use but must be called in protocol order.
type Initiation struct {
	e     *Engine
	seed  *seedKeys // the seed this attempt is made under
	mu    sync.Mutex
	hs    *noise.HandshakeState
	state initState
	local uint32
	ts    [timestampLen]byte
	// mac1 of the last message sent, which a COOKIE_REPLY must be bound to.
	lastMAC1 [wire.MACLen]byte
	info     ChallengeInfo
	// auth is the AUTH_PROOF without mac1/mac2, kept so that it can be resent with a
	// cookie after the responder answered it with COOKIE_REPLY.
	auth [wire.AuthMAC1Off]byte
}

// Initiate starts a handshake: it returns the Initiation and the HELLO appended to out.
// localIndex is the caller's fresh nonzero receiver index for the session. cookie is the
// responder address's cookie if the caller holds one younger than CookieSecretLifetime
// (16 bytes), else nil.
func (e *Engine) Initiate(localIndex uint32, cookie []byte, out []byte) (*Initiation, []byte, error) {
	return e.InitiateSeed(0, localIndex, cookie, out)
}

// InitiateSeed is Initiate under the attempt-th seed held, modulo their number: the
// first attempt of a series uses the first seed, and a retry after no answer the next
// one, so that a node that moved to a next seed still reaches one that has not.
func (e *Engine) InitiateSeed(attempt int, localIndex uint32, cookie []byte, out []byte) (*Initiation, []byte, error) {
	if localIndex == 0 {
		return nil, nil, fmt.Errorf("%w: zero index", ErrBadArgument)
	}
	if len(cookie) != 0 && len(cookie) != wire.MACLen {
		return nil, nil, fmt.Errorf("%w: cookie must be %d bytes", ErrBadArgument, wire.MACLen)
	}
	sk := e.seedFor(attempt)
	hs, err := e.noiseState(true, sk)
	if err != nil {
		return nil, nil, err
	}
	i := &Initiation{e: e, seed: sk, hs: hs, local: localIndex, ts: e.timestamp()}
	var pl [helloPlainLen]byte
	copy(pl[:], i.ts[:])
	binary.LittleEndian.PutUint32(pl[timestampLen:], e.caps)

	base := len(out)
	out = appendHeader(out, wire.TypeHello, localIndex)
	out, _, _, err = hs.WriteMessage(out, pl[:])
	if err != nil {
		return nil, nil, err
	}
	if len(out)-base != wire.HelloMAC1Off {
		return nil, nil, fmt.Errorf("handshake: internal: HELLO is %d bytes before mac1", len(out)-base)
	}
	out = finishMACs(sk, out, base, cookie)
	copy(i.lastMAC1[:], out[base+wire.HelloMAC1Off:])
	return i, out, nil
}

// SeedID names the seed this Initiation is made under.
func (i *Initiation) SeedID() [16]byte { return i.seed.id }

// LocalIndex is the index this Initiation was started with; COOKIE_REPLY and CHALLENGE
// name it as their receiver index, which is how the caller finds the Initiation.
func (i *Initiation) LocalIndex() uint32 { return i.local }

// Timestamp is the TAI64N sent in this Initiation's HELLO.
func (i *Initiation) Timestamp() [12]byte { return i.ts }

// ReadChallenge verifies a CHALLENGE answering this Initiation and returns what it says
// about the responder. The caller checks the name and pinned key before WriteAuthProof.
// A CHALLENGE that fails after mac1 (only a seed holder can send one) ends the Initiation.
func (i *Initiation) ReadChallenge(msg []byte) (ChallengeInfo, error) {
	e := i.e
	if err := checkHeader(msg, wire.TypeChallenge, wire.ChallengeLen); err != nil {
		return ChallengeInfo{}, err
	}
	if !i.seed.checkMAC1(msg, wire.ChallengeMAC1Off) {
		return ChallengeInfo{}, ErrBadMAC1
	}
	var zero [wire.MACLen]byte
	if msg[2] != 0 || msg[3] != 0 || !bytes.Equal(msg[wire.ChallengeMAC2Off:], zero[:]) {
		return ChallengeInfo{}, fmt.Errorf("%w: reserved bytes or mac2 set", ErrMalformed)
	}
	sender := binary.LittleEndian.Uint32(msg[wire.ChallengeSenderOff:])
	if sender == 0 {
		return ChallengeInfo{}, fmt.Errorf("%w: zero sender index", ErrMalformed)
	}
	if binary.LittleEndian.Uint32(msg[wire.ChallengeReceiverOff:]) != i.local {
		return ChallengeInfo{}, ErrUnknownIndex
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state != stHelloSent {
		return ChallengeInfo{}, ErrState
	}
	payload, _, _, err := i.hs.ReadMessage(make([]byte, 0, challengePlainLen), msg[wire.ChallengeNoiseOff:wire.ChallengeMAC1Off])
	if err != nil {
		i.state = stFailed
		return ChallengeInfo{}, noiseErr(err)
	}
	if len(payload) != challengePlainLen || payload[5] != 0 || payload[6] != 0 || payload[7] != 0 {
		i.state = stFailed
		return ChallengeInfo{}, fmt.Errorf("%w: CHALLENGE payload", ErrMalformed)
	}
	peerCaps := binary.LittleEndian.Uint32(payload[0:]) & wire.CapHardwareAES
	c := wire.CipherID(payload[4])
	if c != chooseCipher(e.caps, peerCaps) {
		i.state = stFailed
		return ChallengeInfo{}, fmt.Errorf("%w: responder chose %v, offered caps %#x/%#x", ErrCipherDowngrade, c, e.caps, peerCaps)
	}
	name, err := parseName(payload[8:])
	if err != nil {
		i.state = stFailed
		return ChallengeInfo{}, err
	}
	info := ChallengeInfo{RemoteIndex: sender, PeerName: name, Cipher: c}
	copy(info.PeerStatic[:], i.hs.PeerStatic())
	i.info = info
	i.state = stChallengeRead
	return info, nil
}

// WriteAuthProof completes the handshake on the initiator's side: it returns AUTH_PROOF
// appended to out and the session keys. cookie is as for Initiate. After this the caller
// may send DATA (section 4.6) and treats the session as confirmed on the first
// authenticated frame from the responder.
func (i *Initiation) WriteAuthProof(cookie []byte, out []byte) ([]byte, Result, error) {
	if len(cookie) != 0 && len(cookie) != wire.MACLen {
		return nil, Result{}, fmt.Errorf("%w: cookie must be %d bytes", ErrBadArgument, wire.MACLen)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state != stChallengeRead {
		return nil, Result{}, ErrState
	}
	var pl [authPlainLen]byte
	putName(pl[:], i.e.name)
	base := len(out)
	out = appendHeader(out, wire.TypeAuthProof, i.local, i.info.RemoteIndex)
	out, cs1, cs2, err := i.hs.WriteMessage(out, pl[:])
	if err != nil || cs1 == nil || cs2 == nil || len(out)-base != wire.AuthMAC1Off {
		i.state = stFailed
		if err == nil {
			err = fmt.Errorf("handshake: internal: AUTH_PROOF did not complete Noise")
		}
		return nil, Result{}, noiseErr(err)
	}
	copy(i.auth[:], out[base:])
	out = finishMACs(i.seed, out, base, cookie)
	copy(i.lastMAC1[:], out[base+wire.AuthMAC1Off:])
	i.state = stAuthSent
	res := Result{
		LocalIndex:  i.local,
		RemoteIndex: i.info.RemoteIndex,
		SendKey:     cs1.UnsafeKey(),
		RecvKey:     cs2.UnsafeKey(),
		Cipher:      i.info.Cipher,
		PeerStatic:  i.info.PeerStatic,
		PeerName:    i.info.PeerName,
		Initiator:   true,
		Timestamp:   i.ts,
		SeedID:      i.seed.id,
	}
	return out, res, nil
}

// ResendAuthProof returns the AUTH_PROOF already sent, now with mac2 from cookie: the
// answer to a COOKIE_REPLY for an AUTH_PROOF (the Noise state has moved on, so a new one
// cannot be made; the bytes before mac1 are identical, so nothing new is revealed).
func (i *Initiation) ResendAuthProof(cookie []byte, out []byte) ([]byte, error) {
	if len(cookie) != 0 && len(cookie) != wire.MACLen {
		return nil, fmt.Errorf("%w: cookie must be %d bytes", ErrBadArgument, wire.MACLen)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state != stAuthSent {
		return nil, ErrState
	}
	base := len(out)
	out = append(out, i.auth[:]...)
	out = finishMACs(i.seed, out, base, cookie)
	copy(i.lastMAC1[:], out[base+wire.AuthMAC1Off:])
	return out, nil
}

// ReadCookieReply opens a COOKIE_REPLY for this Initiation and returns the cookie (16
// bytes) to put into mac2 of the next message to that responder address. It accepts only
// a reply bound to the mac1 of the last message this Initiation sent.
func (i *Initiation) ReadCookieReply(msg []byte) ([]byte, error) {
	if err := checkHeader(msg, wire.TypeCookieReply, wire.CookieReplyLen); err != nil {
		return nil, err
	}
	if msg[2] != 0 || msg[3] != 0 {
		return nil, fmt.Errorf("%w: reserved bytes set", ErrMalformed)
	}
	if binary.LittleEndian.Uint32(msg[wire.CookieReceiverOff:]) != i.local {
		return nil, ErrUnknownIndex
	}
	i.mu.Lock()
	ad := i.lastMAC1
	st := i.state
	i.mu.Unlock()
	if st == stFailed {
		return nil, ErrState
	}
	cookie, err := i.seed.cookie.Open(make([]byte, 0, wire.MACLen),
		msg[wire.CookieNonceOff:wire.CookieSealedOff], msg[wire.CookieSealedOff:], ad[:])
	if err != nil || len(cookie) != wire.MACLen {
		return nil, ErrDecrypt
	}
	return cookie, nil
}
