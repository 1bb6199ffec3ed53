// Package ws is STT's WebSocket transport (docs/protocol.md §9): for networks that
// block UDP, a node carries its frames in binary WebSocket messages over ws:// or
// wss://, directly, behind a reverse proxy, or through an HTTP CONNECT proxy.
//
// # Wire format
//
// Every WebSocket message is binary and holds one or more records, each
//
//	length (2 bytes, little-endian) || message (length bytes)
//
// with 1 <= length <= 65535. A message carries at most MaxMessage bytes (1 MiB by
// default). Text messages, records of length 0, records longer than the receiver's
// buffers and records running past the end of their message are protocol violations:
// the connection is closed and the event counted. No WebSocket extension (in
// particular no compression) is negotiated.
//
// # Trust
//
// STT authenticates and encrypts end to end, so this package carries opaque messages
// and treats every byte from the network as hostile: all limits are enforced before
// memory is committed, a connection that has not carried an authenticated STT frame
// (see Conn.MarkAuthenticated) gets small receive batches and, on a server, is closed
// after AuthTimeout.
//
// TLS (wss://) is here to get through middleboxes that only let TLS or HTTPS out, or
// to sit behind a TLS-terminating reverse proxy. It is not what protects the tunnel:
// STT's own cryptography does, and a peer must not rely on the certificate check for
// anything. InsecureSkipVerify is therefore a legitimate choice, not a hole.
//
// # Connection limit
//
// A server holds at most MaxConns connections. When all are taken, a new upgrade evicts
// the oldest connection that has not been marked authenticated (closing it with
// ErrEvicted, counted in ServerStats.Evicted) and takes its place; only when every open
// connection is authenticated is the upgrade refused with 503. A connection marked
// authenticated is never evicted, and marking and eviction are serialized, so one that
// is being marked is either evicted first (and the mark has no effect) or kept. The
// victim's slot passes to the newcomer at once, while the victim's goroutines are still
// exiting (promptly: its socket is closed), so MaxConns bounds the open connections,
// not those still winding down.
//
// So someone who can reach the listener but cannot produce an authenticated STT frame
// (has no seed) can no longer lock peers out by holding every slot: each connection
// they open pushes out their own oldest one, and an upgrade is refused only while every
// slot is held by an authenticated connection or by an upgrade in progress (a matter of
// microseconds). What they still can do is evict a legitimate connection in the window
// before it is marked authenticated: from the upgrade until the peer's first
// authenticated frame arrives, about one round trip when the peer already has a session
// and two when it must first complete a handshake (its AUTH_PROOF is what authenticates
// it on the responder), one more for a cookie under load. If MaxConns newer connections
// arrive within that window it is evicted, so an attacker who sustains about MaxConns
// upgrades per handshake (with the default 256 and a 100 ms round trip, some 1,300 a
// second) keeps the peer's WebSocket path from coming up for as long as the flood lasts;
// the peer keeps re-dialling, and UDP is not affected. A member, whose connections do
// authenticate, can still fill every slot and get newcomers refused.
//
// # Connections not yet upgraded
//
// Every TCP connection the server accepts is pending until the upgrade handler promotes
// it or it closes: during its TLS handshake, while it sends its request and while it is
// answered. The accepting listener holds them in a set (pending.go): at most
// MaxPendingPerSource from one IPv4 address or IPv6 /64 (a new one beyond it is closed
// at accept, ServerStats.PendingRefusedSource), at most MaxPending in all (a new one
// closes the oldest, PendingEvicted), and none longer than PendingTimeout after its
// accept (PendingExpired), a deadline that does not restart whatever the client sends.
// Keep-alives are off, so a request that is not upgraded is answered with
// "Connection: close" and its connection closed. A connection leaves the set exactly
// once, under the set's lock, by whichever comes first of its close, its promotion, its
// eviction or its deadline; the accounting therefore needs nothing from net/http but the
// Close of the net.Conn it was given. The accept under the set retries its errors with
// backoff (internal/accept): out of file descriptors, the listener waits, never stops.
//
// # Concurrency and resources
//
// Each Conn runs one reader goroutine (which calls the ReceiveFunc), one writer
// goroutine draining a bounded send queue, and one keepalive goroutine. Conn.Send never
// blocks: it copies the frames into one pooled message buffer and drops the message if
// the queue is full. Close stops all three goroutines; Done is closed once they have
// exited. Memory per connection is bounded by Batch receive buffers of BufSize bytes
// (allocated lazily, at most PreAuthBatch of them before authentication), a 16 KiB
// read-ahead buffer, and SendQueue messages of at most MaxMessage bytes.
//
// # Proxies
//
// A server can sit behind a reverse proxy that forwards WebSocket upgrades on its Path;
// it then sees the proxy as the remote address. A client reaches the server directly or
// through an HTTP proxy (explicit, or from HTTP_PROXY/HTTPS_PROXY/NO_PROXY), always with
// CONNECT, for ws:// as for wss://, since plain forwarding proxies rarely pass upgrades.
package ws
