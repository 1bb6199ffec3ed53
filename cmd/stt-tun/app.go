package main

import (
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
)

// DefaultStateDir holds control sockets, daemon logs and routing journals.
const DefaultStateDir = "/run/stt-tun"

func init() {
	// --version prints what the version command prints, not urfave/cli's
	// "stt-tun version X".
	cli.VersionPrinter = func(c *cli.Context) { printVersion(c.App.Writer) }
}

// printVersion prints the version line of both `stt-tun version` and `stt-tun --version`.
func printVersion(w io.Writer) { fmt.Fprintf(w, "stt-tun %s\n", versionString()) }

func newApp(e *env) *cli.App {
	app := &cli.App{
		Name:    "stt-tun",
		Usage:   "userspace encrypted tunnel",
		Version: versionString(),
		Description: `stt-tun carries IP packets between peers that share a network seed, over
encrypted UDP (or WebSocket where UDP is blocked), through a TUN interface.

Example, on each node:
   (umask 077; stt-tun genseed > /etc/stt-tun/seed)   # once; copy it to every node
   stt-tun up alpha                                   # reads /etc/stt-tun/alpha.toml
   stt-tun status
   stt-tun down alpha`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "state-dir",
				Usage:   "directory of control sockets, daemon logs and routing journals",
				Value:   DefaultStateDir,
				EnvVars: []string{"STT_TUN_STATE_DIR"},
			},
			&cli.StringFlag{
				Name:    "config-dir",
				Usage:   "directory where a bare NAME means NAME.toml",
				Value:   config.DefaultDir,
				EnvVars: []string{"STT_TUN_CONFIG_DIR"},
			},
		},
		Commands: []*cli.Command{
			upCommand(e),
			downCommand(e),
			statusCommand(e),
			reloadCommand(e),
			pingCommand(e),
			genseedCommand(e),
			seedCommand(e),
			genkeyCommand(e),
			pubkeyCommand(e),
			keyUpgradeCommand(e),
			adminCommand(e),
			revokeCommand(e),
			completionCommand(e),
			{
				Name:      "version",
				Usage:     "print the version",
				UsageText: "stt-tun version",
				Description: `Example:
   $ stt-tun version
   stt-tun v0.1.0`,
				Action: func(c *cli.Context) error {
					if c.Args().Present() {
						return usageError("version takes no arguments")
					}
					printVersion(e.stdout)
					return nil
				},
			},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError("unknown command %q (see 'stt-tun --help')", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
		Reader:         e.stdin,
		Writer:         e.stdout,
		ErrWriter:      e.stderr,
		ExitErrHandler: func(*cli.Context, error) {}, // run reports errors; never os.Exit here
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError("%v (see 'stt-tun --help')", err)
		},
	}
	for _, cmd := range app.Commands {
		name := cmd.Name
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return usageError("%s: %v (see 'stt-tun %s --help')", name, err, name)
		}
	}
	return app
}

// stateDir is the --state-dir flag.
func stateDir(c *cli.Context) string { return c.String("state-dir") }

// timeoutFlag bounds how long a command waits for a daemon.
func timeoutFlag(def time.Duration) *cli.GenericFlag {
	return durationFlag("timeout", nil, "how long to wait for the daemon", def)
}

const configFlagName = "config"

// configFlag is -c FILE.
func configFlag() *cli.StringFlag {
	return &cli.StringFlag{
		Name:      configFlagName,
		Aliases:   []string{"c"},
		Usage:     "configuration `FILE` (instead of NAME)",
		TakesFile: true,
	}
}

// configPath turns NAME or -c FILE into the configuration file to read. A bare NAME
// means <config-dir>/NAME.toml; anything config.ResolvePath takes as a path is one.
func configPath(c *cli.Context, cmd string) (path string, bare bool, err error) {
	file := c.String(configFlagName)
	switch n := c.Args().Len(); {
	case n > 1:
		return "", false, usageError("%s: unexpected arguments %q (one NAME at a time)", cmd, c.Args().Slice()[1:])
	case n == 1 && file != "":
		return "", false, usageError("%s: give NAME or -c FILE, not both", cmd)
	case n == 0 && file == "":
		return "", false, usageError("%s: missing NAME or -c FILE (see 'stt-tun %s --help')", cmd, cmd)
	case file != "":
		return file, false, nil
	}
	arg := c.Args().First()
	if p := config.ResolvePath(arg); p != arg {
		return filepath.Join(c.String("config-dir"), arg+".toml"), true, nil
	}
	return arg, false, nil
}
