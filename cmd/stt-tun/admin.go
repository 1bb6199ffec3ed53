package main

// admin.go holds the commands of network administrators: `admin genkey` and `admin
// pubkey` for admin keys, and `revoke`, which signs a revocation with an admin key on
// this machine and hands the signed bytes to the local daemon to spread. The admin key
// never leaves the command: the daemon gets only the signature.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/stt/mesh"
)

func adminCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "admin",
		Usage:     "make admin keys, which sign revocations and seed rotations",
		UsageText: "stt-tun admin genkey | stt-tun admin pubkey < ADMIN-KEY-FILE",
		Description: `An admin key is an Ed25519 key whose public half the members list in
[membership] admins; they obey the statements it signs (stt-tun revoke, stt-tun
seed rotate). Keep the private key with the administrator, not on the members: revoke
and seed rotate need it only while they run (on a member, which signs there; the
daemon never reads the key).

A node's own key file in the ed25519: form is a valid admin key too: its Ed25519
public key (admin pubkey) is not the X25519 key that pubkey prints and peers pin.

Example:
   $ (umask 077; stt-tun admin genkey > admin.key)
   $ stt-tun admin pubkey < admin.key
   F0VTtFbd38aQjsqxwQH+arIeK6oGF3lbfUOmNIKZP9U=`,
		Subcommands: []*cli.Command{
			{
				Name:      "genkey",
				Usage:     "print a new random admin key (ed25519:base64)",
				UsageText: "stt-tun admin genkey",
				Action: func(c *cli.Context) error {
					if c.Args().Present() {
						return usageError("admin genkey takes no arguments")
					}
					key, err := config.GenerateNodeKey()
					if err != nil {
						return err
					}
					_, err = fmt.Fprintln(e.stdout, key.Encode())
					return err
				},
			},
			{
				Name:      "pubkey",
				Usage:     "read an admin key on stdin, print its public key for [membership] admins",
				UsageText: "stt-tun admin pubkey < ADMIN-KEY-FILE",
				Action: func(c *cli.Context) error {
					if c.Args().Present() {
						return usageError("admin pubkey takes no arguments; it reads the admin key on stdin")
					}
					in, err := io.ReadAll(io.LimitReader(bufio.NewReader(e.stdin), maxKeyInput+1))
					if err != nil {
						return fmt.Errorf("read admin key: %w", err)
					}
					if len(in) > maxKeyInput {
						return errors.New("read admin key: input too long for a key")
					}
					text := strings.TrimSpace(string(in))
					clear(in)
					if text == "" {
						return errors.New("read admin key: stdin is empty (try: stt-tun admin genkey | stt-tun admin pubkey)")
					}
					priv, err := adminKeyOf(config.DecodeNodeKey(text))
					if err != nil {
						return fmt.Errorf("read admin key: %w", err)
					}
					_, err = fmt.Fprintln(e.stdout, base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)))
					return err
				},
			},
		},
	}
}

// adminKeyOf turns a decoded key file into an Ed25519 private key; a legacy key has none.
func adminKeyOf(k config.NodeKey, err error) (ed25519.PrivateKey, error) {
	if err != nil {
		return nil, err
	}
	if k.Legacy {
		return nil, errors.New("a legacy X25519 key has no Ed25519 key; an admin key is in the ed25519: form (stt-tun admin genkey)")
	}
	return ed25519.NewKeyFromSeed(k.Ed25519Seed[:]), nil
}

func revokeCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "revoke",
		Usage:     "revoke a member: sign it with an admin key, the members refuse it from then on",
		UsageText: "stt-tun revoke --admin-key FILE [-I NAME] MEMBER",
		Description: `revoke signs a revocation of MEMBER with the admin key in FILE, on this machine,
and hands the signed statement to the local daemon, which spreads it to the members.
Each member that lists the admin key in [membership] admins closes its sessions with
MEMBER at once, refuses its handshakes and its record from then on (drop reason
revoked), and keeps the revocation across restarts. The admin key never goes to the
daemon. MEMBER is a member's name as status shows it, or its base64 public key.

Nothing is sent, and revoke fails with one line, when the daemon has no
[membership] admins, when the admin key is not one of them, or when MEMBER is a
name no member it knows goes by (or goes by under two keys). A public key is taken
even when no member has it, so that a member that is away can be revoked. -I NAME
picks the interface; it may be left out when one is up.

A revoked member still holds the seed: rotate the seed (docs/operations.md,
"Someone left: revoke and rotate") to lock it out for good.

Example:
   $ stt-tun revoke --admin-key ~/admin.key laptop-bob
   revoked laptop-bob (p0Y8jv6Q2c3L1m7tXr9WbqZ4e5F0aK2sH8dN1uV3yGc=) on stt0: spreading to the members`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:      "admin-key",
				Usage:     "the admin key `FILE` (ed25519:base64, mode 0600)",
				TakesFile: true,
			},
			&cli.StringFlag{
				Name:    "interface",
				Aliases: []string{"I"},
				Usage:   "the interface `NAME` whose daemon spreads the revocation",
			},
			timeoutFlag(10 * time.Second),
		},
		Action: func(c *cli.Context) error { return revoke(c, e) },
	}
}

// adminCall is what revoke and seed rotate share once their flags are checked: the
// admin key read from --admin-key, the mesh interface whose daemon takes the statement,
// its control socket and its status.
type adminCall struct {
	key        ed25519.PrivateKey
	link, sock string
	st         status.Status
}

// openAdminCall reads the admin key and asks the daemon of the mesh interface (-I, or
// the only one up) for its status; errors start with cmd. The caller clears key.
func openAdminCall(ctx context.Context, c *cli.Context, cmd, keyFile string) (*adminCall, error) {
	key, err := adminKeyOf(config.LoadKey(keyFile))
	if err != nil {
		return nil, fmt.Errorf("%s: --admin-key: %w", cmd, err)
	}
	dir := stateDir(c)
	link, err := meshInterface(ctx, dir, c.String("config-dir"), c.String("interface"), cmd)
	if err != nil {
		clear(key)
		return nil, err
	}
	sock := ctl.SocketPath(dir, link)
	st, err := ctl.Status(ctx, sock)
	switch {
	case errors.Is(err, ctl.ErrNotRunning):
		err = fmt.Errorf("%s: %s is not up", cmd, link)
	case err != nil:
		err = fmt.Errorf("%s: %w", cmd, err)
	}
	if err != nil {
		clear(key)
		return nil, err
	}
	return &adminCall{key: key, link: link, sock: sock, st: st}, nil
}

func revoke(c *cli.Context, e *env) error {
	switch n := c.Args().Len(); {
	case n == 0:
		return usageError("revoke: missing MEMBER, a name or a base64 public key (see 'stt-tun revoke --help')")
	case n > 1:
		return usageError("revoke: unexpected arguments %q (one MEMBER at a time)", c.Args().Slice()[1:])
	}
	keyFile := c.String("admin-key")
	if keyFile == "" {
		return usageError("revoke: missing --admin-key FILE (the admin key that signs the revocation)")
	}
	ctx, cancel := context.WithTimeout(c.Context, flagDuration(c, "timeout"))
	defer cancel()
	a, err := openAdminCall(ctx, c, "revoke", keyFile)
	if err != nil {
		return err
	}
	defer clear(a.key)
	priv, link, sock := a.key, a.link, a.sock
	s, netID, err := revocationFor(a.st, c.Args().First(), priv.Public().(ed25519.PublicKey), keyFile)
	if err != nil {
		return err
	}
	s.Issued = uint64(time.Now().UnixNano())
	raw, err := s.Marshal(priv, netID)
	if err != nil {
		return fmt.Errorf("revoke: sign: %w", err)
	}
	r, err := ctl.Statement(ctx, sock, raw)
	var de *ctl.DaemonError
	switch {
	case errors.As(err, &de):
		return fmt.Errorf("revoke: %s refused it: %s", link, de.Msg)
	case err != nil:
		return fmt.Errorf("revoke: %w", err)
	case !r.Accepted:
		return fmt.Errorf("revoke: %s refused the revocation: %s", link, r.Reason)
	}
	fmt.Fprintln(e.stdout, revokedLine(s.Revoke.Name, config.EncodeKey(s.Revoke.Target), link))
	return nil
}

// revokedLine is what revoke prints once the daemon took the revocation of key, the
// member's name when the daemon knew it.
func revokedLine(name, key, link string) string {
	if name == "" {
		return fmt.Sprintf("revoked %s (no member %s knows has that key) on %s: spreading to the members", key, link, link)
	}
	return fmt.Sprintf("revoked %s (%s) on %s: spreading to the members", name, key, link)
}

// revocationFor checks what the daemon's status says against the admin key and finds
// the member to revoke: it returns the unsigned statement and the network id to sign
// it for, or the one-line reason not to send anything.
func revocationFor(st status.Status, member string, admin ed25519.PublicKey, keyFile string) (*mesh.Statement, [16]byte, error) {
	var netID [16]byte
	m := st.Mesh
	if m == nil {
		return nil, netID, fmt.Errorf("revoke: %s has no [discovery]: revocations travel between the members of a mesh", st.Interface)
	}
	if len(m.Admins) == 0 {
		return nil, netID, fmt.Errorf("revoke: %s has no [membership] admins, so no member obeys a revocation; remove the member by rotating the seed by hand (docs/operations.md, \"Someone left\")", st.Interface)
	}
	adminB64 := base64.StdEncoding.EncodeToString(admin)
	known := false
	for _, a := range m.Admins {
		known = known || a == adminB64
	}
	if !known {
		return nil, netID, fmt.Errorf("revoke: the key in %s (public key %s) is not one of the admins of %s", keyFile, adminB64, st.Interface)
	}
	id, err := hex.DecodeString(m.NetworkID)
	if err != nil || len(id) != 16 {
		return nil, netID, fmt.Errorf("revoke: %s reports no network id (%q)", st.Interface, m.NetworkID)
	}
	copy(netID[:], id)
	target, name, err := resolveMember(st, member)
	if err != nil {
		return nil, netID, err
	}
	return &mesh.Statement{Kind: mesh.StatementRevoke, Revoke: &mesh.Revocation{Target: target, Name: name}}, netID, nil
}

// resolveMember finds MEMBER among the daemon's peers: a base64 key (taken even when
// the daemon does not know it: an admin may revoke a member that is away), or a name.
func resolveMember(st status.Status, member string) ([32]byte, string, error) {
	if k, err := config.DecodeKey(member); err == nil {
		if config.EncodeKey(k) == st.PublicKey {
			return k, "", fmt.Errorf("revoke: %s is the key of %s itself; revoke it from another member", member, st.Interface)
		}
		for _, p := range st.Peers {
			if p.PublicKey == member {
				return k, p.Name, nil
			}
		}
		return k, "", nil
	}
	if member == st.NodeName {
		return [32]byte{}, "", fmt.Errorf("revoke: %q is %s itself; revoke it from another member", member, st.Interface)
	}
	var keys []string
	for _, p := range st.Peers {
		if p.Name == member && p.PublicKey != "" && !slices.Contains(keys, p.PublicKey) {
			keys = append(keys, p.PublicKey)
		}
	}
	switch len(keys) {
	case 0:
		return [32]byte{}, "", fmt.Errorf("revoke: %s knows no member named %q with a key; give its base64 public key instead", st.Interface, member)
	case 1:
		k, _ := config.DecodeKey(keys[0])
		return k, member, nil
	}
	return [32]byte{}, "", fmt.Errorf("revoke: %d keys go by the name %q on %s (%s); give the public key to revoke", len(keys), member, st.Interface, strings.Join(keys, ", "))
}

// meshInterface finds the interface a network-wide command goes to: the one given (a
// NAME given to up is accepted too), or else the only one running.
func meshInterface(ctx context.Context, dir, configDir, given, cmd string) (string, error) {
	if given != "" {
		return pingInterface(ctx, dir, configDir, given, "")
	}
	names, err := ctl.List(dir)
	if err != nil {
		return "", err
	}
	var up []string
	for _, name := range names {
		if _, err := ctl.Status(ctx, ctl.SocketPath(dir, name)); err == nil {
			up = append(up, name)
		}
	}
	switch len(up) {
	case 0:
		return "", fmt.Errorf("%s: no interface is up", cmd)
	case 1:
		return up[0], nil
	}
	return "", usageError("%s: several interfaces are up (%s); choose one with -I NAME", cmd, strings.Join(up, ", "))
}
