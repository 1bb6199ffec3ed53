// Validation of [websocket], the node's WebSocket listener.

package config

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// maxWSPathLen bounds [websocket] path, as docs/configuration.md documents.
const maxWSPathLen = 256

// MaxPublicURLLen bounds [websocket] public_url: a member record carries at most 200
// bytes of URL.
const MaxPublicURLLen = 200

func (v *validator) websocket(r *rawWebSocket) WebSocket {
	w := WebSocket{Path: DefaultWSPath, MaxPending: DefaultWSMaxPending, MaxPendingPerSource: DefaultWSMaxPendingPerSource}
	if r == nil {
		return w
	}
	if r.Listen != nil && *r.Listen != "" {
		if err := checkListen(*r.Listen); err != nil {
			v.errAt("websocket.listen", "websocket: listen %q %v", *r.Listen, err)
		} else {
			w.Listen = *r.Listen
		}
	}
	hasListen := r.Listen != nil && *r.Listen != ""
	needsListen := func(key string) {
		if !hasListen {
			v.errAt("websocket."+key, "websocket: %s has no use without listen; add e.g. listen = \"0.0.0.0:8443\"", key)
		}
	}
	if r.Path != nil {
		needsListen("path")
		if err := checkWSPath(*r.Path); err != nil {
			v.errAt("websocket.path", "websocket: path %q %v", *r.Path, err)
		} else {
			w.Path = *r.Path
		}
	}
	w.TLSCert = v.optionalFile(r.TLSCert, "websocket.tls_cert", "websocket: tls_cert")
	w.TLSKey = v.optionalFile(r.TLSKey, "websocket.tls_key", "websocket: tls_key")
	certGiven := r.TLSCert != nil && *r.TLSCert != ""
	keyGiven := r.TLSKey != nil && *r.TLSKey != ""
	switch {
	case certGiven && !keyGiven:
		v.errAt("websocket.tls_cert", "websocket: tls_cert needs tls_key, the certificate's private key; set both for wss://, or neither for ws://")
	case keyGiven && !certGiven:
		v.errAt("websocket.tls_key", "websocket: tls_key needs tls_cert; set both for wss://, or neither for ws://")
	}
	if certGiven {
		needsListen("tls_cert")
	} else if keyGiven {
		needsListen("tls_key")
	}
	if w.TLSCert == "" || w.TLSKey == "" {
		// Half a TLS configuration is never used: the errors above say why.
		w.TLSCert, w.TLSKey = "", ""
	}
	if r.MaxPending != nil {
		needsListen("max_pending")
		if n := *r.MaxPending; n < 1 || n > MaxWSPending {
			v.errAt("websocket.max_pending", "websocket: max_pending = %d must be between 1 and %d", n, MaxWSPending)
		} else {
			w.MaxPending = int(n)
		}
	}
	if r.PublicURL != nil && *r.PublicURL != "" {
		needsListen("public_url")
		if shown, err := checkWSURL(*r.PublicURL); err != nil {
			v.errAt("websocket.public_url", "websocket: public_url %q %v", shown, err)
		} else if n := len(*r.PublicURL); n > MaxPublicURLLen {
			v.errAt("websocket.public_url", "websocket: public_url is %d bytes long; the limit is %d (it must fit the member record)", n, MaxPublicURLLen)
		} else {
			w.PublicURL = *r.PublicURL
		}
	}
	w.MaxPendingPerSource = min(w.MaxPendingPerSource, w.MaxPending)
	if r.MaxPendingPerSource != nil {
		needsListen("max_pending_per_source")
		if n := *r.MaxPendingPerSource; n < 1 || n > int64(w.MaxPending) {
			v.errAt("websocket.max_pending_per_source", "websocket: max_pending_per_source = %d must be between 1 and max_pending (%d)", n, w.MaxPending)
		} else {
			w.MaxPendingPerSource = int(n)
		}
	}
	return w
}

// checkWSPath accepts an absolute HTTP path without query or fragment.
func checkWSPath(s string) error {
	switch {
	case !strings.HasPrefix(s, "/"):
		return errors.New("must start with /, e.g. \"/stt\"")
	case len(s) > maxWSPathLen:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), maxWSPathLen)
	case strings.ContainsAny(s, "?#") || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return errors.New("may not contain '?', '#', spaces or control characters")
	}
	return nil
}
