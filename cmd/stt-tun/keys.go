package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
)

func genseedCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "genseed",
		Usage:     "print a new random network seed (base64), or a planned rotation to a new one",
		UsageText: "stt-tun genseed\n   stt-tun genseed --next-of SEED-FILE [--from +10m|RFC3339] [--overlap 1h]",
		Description: `Every node of one network holds the same seed; holding it makes a node a member.
Keep it secret and copy it to the nodes out of band.

With --next-of, prints a seed file that plans a rotation: the current seed and network
of SEED-FILE and a fresh next seed, used to initiate from --from on; the current seed
is still accepted for --overlap after that, then refused. Copy the printed file over
the seed file of every node before --from and run "stt-tun reload" on each: sessions
move to the next seed without interruption (docs/configuration.md, "Replacing the seed").

Example:
   $ (umask 077; stt-tun genseed > /etc/stt-tun/seed)
   $ (umask 077; stt-tun genseed --next-of /etc/stt-tun/seed --from +30m > seed.next)`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "next-of", Usage: "plan a rotation away from the seed in `SEED-FILE`"},
			&cli.StringFlag{Name: "from", Value: "+10m", Usage: "when nodes start using the next seed: `+DURATION` from now or an RFC 3339 time"},
			durationFlag("overlap", nil, "how long after --from the current seed is still accepted (at least 45s)", time.Hour),
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("genseed takes no arguments")
			}
			seed, err := config.GenerateSeed()
			if err != nil {
				return fmt.Errorf("generate seed: %w", err)
			}
			if !c.IsSet("next-of") {
				for _, f := range []string{"from", "overlap"} {
					if c.IsSet(f) {
						return usageError("--%s plans a rotation: it needs --next-of SEED-FILE", f)
					}
				}
				_, err = fmt.Fprintln(e.stdout, config.EncodeKey(seed))
				return err
			}
			now := time.Now()
			from, err := parseFrom(c.String("from"), now)
			if err != nil {
				return usageError("--from: %v", err)
			}
			overlap := flagDuration(c, "overlap")
			if overlap < minRotateOverlap || overlap > maxRotateOverlap || overlap%time.Second != 0 {
				// As for seed rotate: a shorter overlap ends before every session has
				// moved, and the ones left on the old seed are torn down at until.
				return usageError("--overlap %v: want whole seconds, from %v (members take up to 30s to move their sessions) to %v",
					overlap, minRotateOverlap, maxRotateOverlap)
			}
			cur, err := config.LoadSeedFile(c.String("next-of"))
			if err != nil {
				return fmt.Errorf("--next-of: %w", err)
			}
			if cur.Next != nil {
				if now.Before(cur.Until) {
					return usageError("--next-of %s already plans a rotation (from %s until %s); plan the next one after it",
						c.String("next-of"), cur.From.Format(time.RFC3339), cur.Until.Format(time.RFC3339))
				}
				cur.Seed = *cur.Next // that rotation is over: its next seed is the current one
			}
			plan := config.SeedFile{Seed: cur.Seed, Network: cur.Network, Next: &seed, From: from, Until: from.Add(overlap)}
			out := plan.Encode()
			defer clear(out)
			_, err = e.stdout.Write(out)
			return err
		},
	}
}

// parseFrom reads --from: "+DURATION" (or a bare duration) from now, or an RFC 3339
// time; it must not be in the past.
func parseFrom(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "+")); err == nil {
		if d < 0 {
			return time.Time{}, errors.New("a negative duration is in the past")
		}
		return now.Add(d).Truncate(time.Second), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither +DURATION (+10m) nor an RFC 3339 time (2026-01-02T15:04:05Z)", s)
	}
	if t.Before(now) {
		return time.Time{}, fmt.Errorf("%s is in the past", s)
	}
	return t, nil
}

func genkeyCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "genkey",
		Usage:     "print a new random private key (ed25519:base64)",
		UsageText: "stt-tun genkey",
		Description: `A node creates its key on first start; genkey is for making one ahead of time,
for example to pin its public key in the peers' configuration. The key is an Ed25519
seed, written "ed25519:" and 44 characters of base64; the handshake's X25519 key is
derived from it (docs/configuration.md, "Seed and key files").

Example:
   $ (umask 077; stt-tun genkey > /etc/stt-tun/alpha.key)
   $ stt-tun pubkey < /etc/stt-tun/alpha.key`,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("genkey takes no arguments")
			}
			key, err := config.GenerateNodeKey()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(e.stdout, key.Encode())
			return err
		},
	}
}

// maxKeyInput bounds what pubkey reads: a key is at most 52 characters.
const maxKeyInput = 4096

func pubkeyCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "pubkey",
		Usage:     "read a private key on stdin, print its public key",
		UsageText: "stt-tun pubkey < PRIVATE-KEY-FILE",
		Description: `Reads a key in either format (ed25519:BASE64, or a legacy bare base64 X25519
key) and prints the node's X25519 public key, the one [[peer]] public_key pins and
status shows.

Example:
   $ stt-tun genkey | tee alpha.key | stt-tun pubkey
   hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=`,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("pubkey takes no arguments; it reads the private key on stdin")
			}
			in, err := io.ReadAll(io.LimitReader(bufio.NewReader(e.stdin), maxKeyInput+1))
			if err != nil {
				return fmt.Errorf("read private key: %w", err)
			}
			if len(in) > maxKeyInput {
				return errors.New("read private key: input too long for a key")
			}
			text := strings.TrimSpace(string(in))
			if text == "" {
				return errors.New("read private key: stdin is empty (try: stt-tun genkey | stt-tun pubkey)")
			}
			key, err := config.DecodeNodeKey(text)
			if err != nil {
				return fmt.Errorf("read private key: %w", err)
			}
			_, err = fmt.Fprintln(e.stdout, config.EncodeKey(key.PublicKey()))
			return err
		},
	}
}

func keyUpgradeCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "key-upgrade",
		Usage:     "replace a legacy X25519 key file with a new key in the ed25519 format",
		UsageText: "stt-tun key-upgrade FILE",
		Description: `A key file made before the ed25519 format holds a bare X25519 key. It works for
[[peer]] setups, but [discovery] needs an Ed25519 key, which signs the node's member
record. key-upgrade makes a new key, keeps the old file as FILE.legacy (mode 0600),
and replaces FILE atomically. The new key is a new identity: its public key is not the
old one, so every [[peer]] public_key that pins this node must change, and the node's
IPv6 mesh address is derived from the new key. The running interface keeps the old
key until it is restarted. To go back, move FILE.legacy over FILE.

Example:
   # stt-tun key-upgrade /etc/stt-tun/alpha.key
   upgraded /etc/stt-tun/alpha.key; the old key is kept in /etc/stt-tun/alpha.key.legacy
   old public key: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
   new public key: KOD+v1du/WfPwISWjwaUDAAdJzc7qGI8S7IrRSZokWI=
   ...`,
		Action: func(c *cli.Context) error {
			if c.Args().Len() != 1 {
				return usageError("key-upgrade: give one key FILE (see 'stt-tun key-upgrade --help')")
			}
			path := c.Args().First()
			old, cur, backup, err := config.UpgradeKeyFile(path)
			if err != nil {
				return fmt.Errorf("key-upgrade: %w", err)
			}
			oldPub, newPub := config.EncodeKey(old.PublicKey()), config.EncodeKey(cur.PublicKey())
			_, err = fmt.Fprintf(e.stdout, `upgraded %s; the old key is kept in %s
old public key: %s
new public key: %s
Every [[peer]] public_key = %q that pins this node on other nodes must change to %q.
This node's IPv6 mesh address will be derived from the new key.
A running interface keeps the old key until restarted (stt-tun down NAME; stt-tun up NAME).
`, path, backup, oldPub, newPub, oldPub, newPub)
			return err
		},
	}
}
