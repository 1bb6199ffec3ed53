package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
)

func genseedCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "genseed",
		Usage:     "print a new random network seed (base64)",
		UsageText: "stt-tun genseed",
		Description: `Every node of one network holds the same seed; holding it makes a node a member.
Keep it secret and copy it to the nodes out of band.

Example:
   $ (umask 077; stt-tun genseed > /etc/stt-tun/seed)`,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("genseed takes no arguments")
			}
			seed, err := config.GenerateSeed()
			if err != nil {
				return fmt.Errorf("generate seed: %w", err)
			}
			_, err = fmt.Fprintln(e.stdout, config.EncodeKey(seed))
			return err
		},
	}
}

func genkeyCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "genkey",
		Usage:     "print a new random private key (base64)",
		UsageText: "stt-tun genkey",
		Description: `A node creates its key on first start; genkey is for making one ahead of time,
for example to pin its public key in the peers' configuration.

Example:
   $ (umask 077; stt-tun genkey > /etc/stt-tun/alpha.key)
   $ stt-tun pubkey < /etc/stt-tun/alpha.key`,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("genkey takes no arguments")
			}
			key, err := config.GenerateKey()
			if err != nil {
				return fmt.Errorf("generate key: %w", err)
			}
			_, err = fmt.Fprintln(e.stdout, config.EncodeKey(key))
			return err
		},
	}
}

// maxKeyInput bounds what pubkey reads: a key is 44 characters of base64.
const maxKeyInput = 4096

func pubkeyCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "pubkey",
		Usage:     "read a private key on stdin, print its public key",
		UsageText: "stt-tun pubkey < PRIVATE-KEY-FILE",
		Description: `Example:
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
			priv, err := config.DecodeKey(text)
			if err != nil {
				return fmt.Errorf("read private key: %w", err)
			}
			_, err = fmt.Fprintln(e.stdout, config.EncodeKey(config.PublicKey(priv)))
			return err
		},
	}
}
