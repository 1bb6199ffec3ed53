package stt

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/stt-tun/stt-tun/stt/udp"
	"github.com/stt-tun/stt-tun/stt/wire"
)

// frameVector is one golden DATA frame: inputs and the exact bytes on the wire.
type frameVector struct {
	Name     string `json:"name"`
	Cipher   string `json:"cipher"`
	Key      string `json:"key"`
	Receiver uint32 `json:"receiver"`
	Stream   uint16 `json:"stream"`
	Counter  uint64 `json:"counter"`
	Payload  string `json:"payload"`
	// RelayID, when set, makes the vector a RELAY message (section 9.1) with that id
	// around the DATA frame.
	RelayID uint32 `json:"relay_id,omitempty"`
	Frame   string `json:"frame"`
}

func fixedKey(base byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = base + byte(i)
	}
	return k
}

// goldenFrameInputs are the frames docs/protocol.md's golden vectors describe.
func goldenFrameInputs() []frameVector {
	ipv4 := "4500001c000000004011000a0a0900010a090002" + "03e807d00008abcd"
	control := hex.EncodeToString(wire.AppendControl(wire.AppendControl(nil, wire.CtlPing,
		[]byte{1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}), wire.CtlStreamOpen, []byte{5, 0}))
	var out []frameVector
	for _, c := range []wire.CipherID{wire.CipherChaCha20Poly1305, wire.CipherAES256GCM} {
		k := fixedKey(0x40)
		out = append(out,
			frameVector{Name: "keepalive", Cipher: c.String(), Key: hex.EncodeToString(k[:]), Receiver: 0x11223344, Stream: 0, Counter: 0, Payload: ""},
			frameVector{Name: "final", Cipher: c.String(), Key: hex.EncodeToString(k[:]), Receiver: 0x11223344, Stream: 0, Counter: 1, Payload: hex.EncodeToString(wire.AppendControl(nil, wire.CtlFinal, nil))},
			frameVector{Name: "control ping+stream_open", Cipher: c.String(), Key: hex.EncodeToString(k[:]), Receiver: 0x11223344, Stream: 0, Counter: 2, Payload: control},
			frameVector{Name: "ipv4 datagram on stream 3", Cipher: c.String(), Key: hex.EncodeToString(k[:]), Receiver: 0xdeadbeef, Stream: 3, Counter: 0x0102030405, Payload: ipv4},
		)
	}
	k := fixedKey(0x40)
	out = append(out, frameVector{Name: "relayed ipv4 datagram on stream 3", Cipher: wire.CipherChaCha20Poly1305.String(), Key: hex.EncodeToString(k[:]),
		Receiver: 0xdeadbeef, Stream: 3, Counter: 0x0102030405, Payload: ipv4, RelayID: 0xa1b2c3d4})
	// A path MTU probe padded to a 64-byte frame, and its answer (docs/protocol.md 6.3).
	probe, err := wire.AppendProbe(nil, 0x01020304, 64)
	if err != nil {
		panic(err)
	}
	out = append(out,
		frameVector{Name: "probe padded to a 64-byte frame", Cipher: wire.CipherChaCha20Poly1305.String(), Key: hex.EncodeToString(k[:]),
			Receiver: 0x11223344, Stream: 0, Counter: 5, Payload: hex.EncodeToString(probe)},
		frameVector{Name: "probe_ack of that probe", Cipher: wire.CipherChaCha20Poly1305.String(), Key: hex.EncodeToString(k[:]),
			Receiver: 0x55667788, Stream: 0, Counter: 9, Payload: hex.EncodeToString(wire.AppendProbeAck(nil, 0x01020304, 64))},
	)
	return out
}

func cipherByName(t *testing.T, name string) wire.CipherID {
	for _, c := range []wire.CipherID{wire.CipherChaCha20Poly1305, wire.CipherAES256GCM} {
		if c.String() == name {
			return c
		}
	}
	t.Fatalf("unknown cipher %q", name)
	return 0
}

func sealVector(t *testing.T, v frameVector) []byte {
	t.Helper()
	key, _ := hex.DecodeString(v.Key)
	payload, _ := hex.DecodeString(v.Payload)
	var k [32]byte
	copy(k[:], key)
	s, err := newSession(nil, 1, v.Receiver, true, cipherByName(t, v.Cipher), &k, &k, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, wire.HeaderLen+len(payload), wire.HeaderLen+len(payload)+wire.TagLen)
	copy(frame[wire.HeaderLen:], payload)
	frame = s.seal(frame, v.Stream, v.Counter, new([12]byte))
	if v.RelayID != 0 {
		m := make([]byte, wire.RelayHeaderLen, wire.RelayHeaderLen+len(frame))
		wire.PutRelayHeader(m, v.RelayID)
		frame = append(m, frame...)
	}
	return frame
}

func TestGoldenFrames(t *testing.T) {
	path := filepath.Join("testdata", "frames.json")
	vs := goldenFrameInputs()
	for i := range vs {
		vs[i].Frame = hex.EncodeToString(sealVector(t, vs[i]))
	}
	if os.Getenv("STT_UPDATE_GOLDEN") == "1" {
		b, _ := json.MarshalIndent(vs, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []frameVector
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if len(want) != len(vs) {
		t.Fatalf("%d vectors on file, %d built", len(want), len(vs))
	}
	for i, w := range want {
		if in := vs[i]; in.Name != w.Name || in.Key != w.Key || in.Payload != w.Payload || in.Counter != w.Counter || in.Stream != w.Stream || in.Receiver != w.Receiver || in.Cipher != w.Cipher || in.RelayID != w.RelayID {
			t.Errorf("vector %d inputs on file differ from the spec's: %+v", i, w)
		}
		if got := hex.EncodeToString(sealVector(t, w)); got != w.Frame {
			t.Errorf("%s/%s: frame\n got %s\nwant %s", w.Cipher, w.Name, got, w.Frame)
		}
		// The layout is the spec's: header fields at their offsets, then ciphertext.
		f, _ := hex.DecodeString(w.Frame)
		if w.RelayID != 0 {
			// A RELAY message: its header, then the DATA frame.
			if typ, err := wire.CheckLength(f); err != nil || typ != wire.TypeRelay {
				t.Fatalf("%s: type %d, %v", w.Name, typ, err)
			}
			id, inner, err := wire.ParseRelay(f)
			if err != nil || id != w.RelayID {
				t.Fatalf("%s: relay id %#x, %v", w.Name, id, err)
			}
			f = inner
		}
		h, err := wire.ParseHeader(f)
		if err != nil || h.Receiver != w.Receiver || h.Stream != w.Stream || h.Counter != w.Counter {
			t.Errorf("%s: header %+v, %v", w.Name, h, err)
		}
		payload, _ := hex.DecodeString(w.Payload)
		if len(f) != wire.Overhead+len(payload) {
			t.Errorf("%s: %d bytes, want %d", w.Name, len(f), wire.Overhead+len(payload))
		}
		// And it opens.
		key, _ := hex.DecodeString(w.Key)
		var k [32]byte
		copy(k[:], key)
		s, _ := newSession(nil, 1, w.Receiver, true, cipherByName(t, w.Cipher), &k, &k, time.Now())
		pt, err := s.open(f, h.Counter, new([12]byte))
		if err != nil || hex.EncodeToString(pt) != w.Payload {
			t.Errorf("%s: does not open to its payload: %v", w.Name, err)
		}
	}
}

// fuzzNode returns a node that is not listening, with one live session whose keys are
// fixed, so fuzzed frames can reach every stage of the receive path.
func fuzzNode(tb testing.TB, h Handler) (*Node, *session) {
	n, err := New(Config{Seed: fixedKey(1), PrivateKey: fixedKey(2), Name: "fuzz", Handler: h, Bind: udp.New()})
	if err != nil {
		tb.Fatal(err)
	}
	p, err := n.AddPeer(PeerConfig{Name: "peer"})
	if err != nil {
		tb.Fatal(err)
	}
	k := fixedKey(0x40)
	s, err := newSession(p, 0x11223344, 0x55667788, false, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	n.index.install(s)
	p.keys.current.Store(s)
	return n, s
}

// recordHandler keeps copies of what the node delivers.
type recordHandler struct{ got [][]byte }

func (h *recordHandler) Deliver(in *Inbound) {
	for i := 0; i < in.N; i++ {
		h.got = append(h.got, bytes.Clone(in.Bufs[i][Headroom:Headroom+in.Sizes[i]]))
	}
}

// FuzzReceive feeds arbitrary datagrams to the node's receive path: nothing may panic,
// and nothing but a frame sealed with the session's key may be delivered.
func FuzzReceive(f *testing.F) {
	k := fixedKey(0x40)
	seal := func(stream uint16, counter uint64, payload []byte) []byte {
		s, _ := newSession(nil, 1, 0x11223344, true, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
		fr := make([]byte, wire.HeaderLen+len(payload), wire.HeaderLen+len(payload)+wire.TagLen)
		copy(fr[wire.HeaderLen:], payload)
		return s.seal(fr, stream, counter, new([12]byte))
	}
	f.Add(seal(0, 0, nil))
	f.Add(seal(3, 7, []byte("datagram")))
	f.Add(seal(0, 9, wire.AppendControl(nil, wire.CtlPing, make([]byte, 12))))
	f.Add(seal(0, 10, wire.AppendControl(nil, wire.CtlReliable, wire.AppendControl([]byte{0, 0, 0, 0}, 0x81, []byte("x")))))
	f.Add(seal(0, 11, []byte{wire.CtlAck, 4, 0, 1, 0, 0, 0}))
	f.Add(seal(0, 12, []byte{wire.CtlPing, 0xff, 0xff}))
	f.Add(make([]byte, wire.HelloLen))
	f.Add(append([]byte{wire.TypeChallenge}, make([]byte, wire.ChallengeLen-1)...))
	f.Add(append([]byte{wire.TypeAuthProof}, make([]byte, wire.AuthProofLen-1)...))
	f.Add(append([]byte{wire.TypeCookieReply}, make([]byte, wire.CookieReplyLen-1)...))
	f.Add([]byte{})
	f.Add([]byte{wire.TypeData})
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) > wire.MaxMessageLen {
			return
		}
		h := &recordHandler{}
		n, _ := fuzzNode(t, h)
		buf := make([]byte, BufferSize)
		copy(buf[recvBase:], msg)
		in := &Inbound{Bufs: make([][]byte, 1), Sizes: make([]int, 1), Peers: make([]*Peer, 1)}
		ep, _ := n.bind.ParseEndpoint("127.0.0.1:9")
		n.receiveBatch([][]byte{buf}, [][]byte{buf[recvBase:]}, []int{len(msg)}, []conn.Endpoint{ep}, in, new([12]byte), nil, new(relayFwd))
		if len(h.got) == 0 {
			return
		}
		// Something was delivered: msg must be a data frame sealed with the session's
		// key, and what was delivered exactly its plaintext.
		hdr, err := wire.ParseHeader(msg)
		if err != nil || msg[0] != wire.TypeData || hdr.Stream == wire.ControlStream {
			t.Fatalf("delivered %d datagrams from a message that is no data frame: %x", len(h.got), msg)
		}
		v, _ := newSession(nil, 0x11223344, 0x55667788, false, wire.CipherChaCha20Poly1305, &k, &k, time.Now())
		plain, err := v.open(bytes.Clone(msg), hdr.Counter, new([12]byte))
		if err != nil {
			t.Fatalf("delivered a frame that does not open under the session's key: %x", msg)
		}
		if len(h.got) != 1 || !bytes.Equal(h.got[0], plain) {
			t.Fatalf("delivered %q, want exactly the plaintext %q", h.got, plain)
		}
	})
}

func benchSealOpen(b *testing.B, c wire.CipherID, open bool) {
	k := fixedKey(9)
	s, err := newSession(nil, 1, 2, true, c, &k, &k, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	const size = 1420
	frame := make([]byte, wire.HeaderLen+size, wire.HeaderLen+size+wire.TagLen)
	nonce := new([12]byte)
	sealed := s.seal(append([]byte(nil), frame...)[:wire.HeaderLen+size:wire.HeaderLen+size+wire.TagLen], 1, 0, nonce)
	work := make([]byte, len(sealed))
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if open {
			copy(work, sealed)
			if _, err := s.open(work, 0, nonce); err != nil {
				b.Fatal(err)
			}
		} else {
			s.seal(frame[:wire.HeaderLen+size], 1, uint64(i), nonce)
		}
	}
}

func BenchmarkSealChaCha20Poly1305(b *testing.B) {
	benchSealOpen(b, wire.CipherChaCha20Poly1305, false)
}
func BenchmarkOpenChaCha20Poly1305(b *testing.B) { benchSealOpen(b, wire.CipherChaCha20Poly1305, true) }
func BenchmarkSealAES256GCM(b *testing.B)        { benchSealOpen(b, wire.CipherAES256GCM, false) }
func BenchmarkOpenAES256GCM(b *testing.B)        { benchSealOpen(b, wire.CipherAES256GCM, true) }

// BenchmarkNodeToNode measures datagrams per second between two nodes over loopback
// UDP, batches of 64 datagrams of 1420 bytes, with a window so the receiver keeps up.
func BenchmarkNodeToNode(b *testing.B) {
	seed := fixedKey(3)
	counter := &countHandler{}
	a := startNode(b, nodeOpts{seed: seed, name: "a", noCap: true})
	r := startNode(b, nodeOpts{seed: seed, name: "b", handler: counter, noCap: true})
	_, _ = r.AddPeer(PeerConfig{Name: "a"})
	p, _ := a.AddPeer(PeerConfig{Name: "b", Endpoint: loopback(r.Node)})
	sendOne(b, p, 0, []byte("warm up"))
	for counter.n.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	counter.n.Store(0)
	benchSend(b, p, counter)
}

type countHandler struct{ n atomic.Int64 }

func (c *countHandler) Deliver(in *Inbound) { c.n.Add(int64(in.N)) }
