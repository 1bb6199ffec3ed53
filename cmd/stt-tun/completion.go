package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/ctl"
)

// What a command's arguments are, for completion.
const (
	argConfigs    = "configs"     // NAME of <config-dir>/NAME.toml
	argInterfaces = "interfaces"  // a running interface, or a configuration's NAME
	argPeers      = "peers"       // a peer name from the configurations
	argShells     = "shells"      // bash or zsh
	argFiles      = "files"       // a file name
	argSubs       = "subcommands" // a subcommand of the command (seed rotate, admin genkey)
)

// commandArgs says what each command's NAME argument completes to; commands not listed
// take no argument worth completing.
var commandArgs = map[string]string{
	"up":          argConfigs,
	"down":        argInterfaces,
	"status":      argInterfaces,
	"reload":      argInterfaces,
	"ping":        argPeers,
	"completion":  argShells,
	"key-upgrade": argFiles,
	"revoke":      argPeers,
}

// flagValues says what a flag's value completes to: "files", "dirs", argInterfaces, or
// a word list. Flags are named by their first name.
var flagValues = map[string]string{
	configFlagName: "files",
	"state-dir":    "dirs",
	"config-dir":   "dirs",
	"log-level":    "debug info warn error",
	"interface":    argInterfaces, // ping -I NAME
	"admin-key":    "files",
	"exclude":      argPeers, // seed rotate --exclude MEMBER, named as revoke names one
}

// subcommands are the subcommands of c a user may type (not the library's help).
func subcommands(c *cli.Command) []*cli.Command {
	var out []*cli.Command
	for _, s := range c.Subcommands {
		if !s.Hidden && s.Name != "help" {
			out = append(out, s)
		}
	}
	return out
}

func subcommandNames(c *cli.Command) string {
	var names []string
	for _, s := range subcommands(c) {
		names = append(names, s.Name)
	}
	return strings.Join(names, " ")
}

func completionCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash or zsh)",
		UsageText: "stt-tun completion (bash | zsh)",
		Description: `The script completes commands, flags, configuration names (from the
configuration directory, default /etc/stt-tun) and running interfaces (from the
control sockets in the state directory, default /run/stt-tun). scripts/install.sh
installs both scripts.

Examples:
   $ source <(stt-tun completion bash)       # this bash session
   $ stt-tun completion bash > /usr/local/share/bash-completion/completions/stt-tun
   $ stt-tun completion zsh > /usr/local/share/zsh/site-functions/_stt-tun`,
		Action: func(c *cli.Context) error {
			if c.Args().Len() != 1 {
				return usageError("completion: give one shell, bash or zsh")
			}
			app := c.App
			switch sh := c.Args().First(); sh {
			case "bash":
				return writeBashCompletion(e.stdout, app)
			case "zsh":
				return writeZshCompletion(e.stdout, app)
			default:
				return usageError("completion: %q is not a shell this knows; give bash or zsh", sh)
			}
		},
	}
}

// visibleFlags are the flags a user may type, but for --help, which the scripts add
// to every command: hidden ones are left out.
func visibleFlags(flags []cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, f := range flags {
		if v, ok := f.(cli.VisibleFlag); ok && !v.IsVisible() {
			continue
		}
		if slices.Contains(f.Names(), "help") {
			continue
		}
		out = append(out, f)
	}
	return out
}

// dashed writes a flag name as typed: -c, --config.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func flagTakesValue(f cli.Flag) bool {
	d, ok := f.(cli.DocGenerationFlag)
	return ok && d.TakesValue()
}

func flagUsage(f cli.Flag) string {
	if d, ok := f.(cli.DocGenerationFlag); ok {
		return strings.ReplaceAll(d.GetUsage(), "`", "") // urfave/cli's placeholder quotes
	}
	return ""
}

// flagWords lists every spelling of the flags, and of --help, for a word list.
func flagWords(flags []cli.Flag) string {
	var w []string
	for _, f := range visibleFlags(flags) {
		for _, n := range f.Names() {
			w = append(w, dashed(n))
		}
	}
	return strings.Join(append(w, "--help", "-h"), " ")
}

// valueFlags lists the spellings of the flags that take a value, as a case pattern.
func valueFlags(flags []cli.Flag) []string {
	var w []string
	for _, f := range visibleFlags(flags) {
		if flagTakesValue(f) {
			for _, n := range f.Names() {
				w = append(w, dashed(n))
			}
		}
	}
	return w
}

func commandNames(app *cli.App) []string {
	var names []string
	for _, c := range app.Commands {
		if !c.Hidden {
			names = append(names, c.Name)
		}
	}
	return names
}

// The shell functions that list completion candidates, shared by both scripts, so
// written in the common ground of bash and zsh's sh emulation. They read the
// configuration and state directories the way stt-tun does: a flag typed on the line,
// else STT_TUN_CONFIG_DIR and STT_TUN_STATE_DIR, else the defaults.
const namesFunctions = `
# __stt_tun_dir FLAG DEFAULT WORDS...: the directory FLAG names among WORDS, or DEFAULT.
__stt_tun_dir() {
  local flag=$1 dir=$2 w take=
  shift 2
  for w in "$@"; do
    if [ -n "$take" ]; then dir=$w; take=; continue; fi
    case $w in
      "$flag") take=1 ;;
      "$flag"=*) dir=${w#*=} ;;
    esac
  done
  printf '%%s\n' "$dir"
}

# __stt_tun_names KIND WORDS...: configuration names (configs), those and running
# interfaces (interfaces), or the peer names in the configurations (peers).
__stt_tun_names() {
  local kind=$1 f n cdir sdir
  shift
  cdir=$(__stt_tun_dir --config-dir "${STT_TUN_CONFIG_DIR:-%[1]s}" "$@")
  sdir=$(__stt_tun_dir --state-dir "${STT_TUN_STATE_DIR:-%[2]s}" "$@")
  if [ "$kind" = configs ] || [ "$kind" = interfaces ]; then
    for f in "$cdir"/*.toml; do
      [ -f "$f" ] || continue
      n=${f##*/}
      printf '%%s\n' "${n%%.toml}"
    done
  fi
  if [ "$kind" = interfaces ]; then
    for f in "$sdir"/*%[3]s; do
      [ -S "$f" ] || continue
      n=${f##*/}
      printf '%%s\n' "${n%%%[3]s}"
    done
  fi
  if [ "$kind" = peers ]; then
    # The name = "..." lines of the [[peer]] sections.
    for f in "$cdir"/*.toml; do
      [ -r "$f" ] || continue
      sed -n '/^[[:space:]]*\[\[peer\]\]/,/^[[:space:]]*\[[^[]/s/^[[:space:]]*name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$f"
    done
  fi
}
`

// namesFunctionsFor fills in the defaults.
func namesFunctionsFor() string {
	return fmt.Sprintf(namesFunctions, config.DefaultDir, DefaultStateDir, ctl.SocketSuffix)
}

// bashValueCase writes a case on $prev that completes the values of flags.
func bashValueCase(b *strings.Builder, flags []cli.Flag, indent string) {
	var arms []string
	for _, f := range visibleFlags(flags) {
		if !flagTakesValue(f) {
			continue
		}
		var names []string
		for _, n := range f.Names() {
			names = append(names, dashed(n))
		}
		arm := indent + "  " + strings.Join(names, " | ") + ")\n" + indent + "    "
		switch kind := flagValues[f.Names()[0]]; kind {
		case "files":
			arm += `compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))`
		case "dirs":
			arm += `compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur"))`
		case argInterfaces, argPeers:
			arm += fmt.Sprintf(`COMPREPLY=($(compgen -W "$(__stt_tun_names %s "${words[@]}" | sort -u)" -- "$cur"))`, kind)
		case "":
			arm += ": # nothing to suggest"
		default:
			arm += fmt.Sprintf(`COMPREPLY=($(compgen -W %q -- "$cur"))`, kind)
		}
		arms = append(arms, arm+"\n"+indent+"    return ;;\n")
	}
	if len(arms) == 0 {
		return
	}
	b.WriteString(indent + "case $prev in\n")
	for _, a := range arms {
		b.WriteString(a)
	}
	b.WriteString(indent + "esac\n")
}

func writeBashCompletion(w io.Writer, app *cli.App) error {
	var b strings.Builder
	b.WriteString("# bash completion for stt-tun. Generated by `stt-tun completion bash`; load it with\n")
	b.WriteString("#   source <(stt-tun completion bash)\n")
	b.WriteString("# or install it as /usr/local/share/bash-completion/completions/stt-tun.\n")
	b.WriteString(namesFunctionsFor())
	b.WriteString(`
_stt_tun() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  local words=("${COMP_WORDS[@]:1:COMP_CWORD-1}") cmd= i flags= args= subs=
  # The command is the first word that is neither a global flag nor its value.
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in
`)
	if vf := valueFlags(app.Flags); len(vf) > 0 {
		fmt.Fprintf(&b, "      %s) ((i++)) ;;\n", strings.Join(vf, " | "))
	}
	b.WriteString("      -*) ;;\n      *) cmd=${COMP_WORDS[i]}; break ;;\n    esac\n  done\n")
	// A command with subcommands: the subcommand is the next word that is neither a
	// flag of the command nor its value; cmd becomes "seed rotate".
	var parents []string
	for _, c := range app.Commands {
		if !c.Hidden && len(subcommands(c)) > 0 {
			parents = append(parents, c.Name)
		}
	}
	if len(parents) > 0 {
		fmt.Fprintf(&b, "  case $cmd in\n    %s)\n      for ((i++; i < COMP_CWORD; i++)); do\n        case ${COMP_WORDS[i]} in\n", strings.Join(parents, " | "))
		for _, name := range parents {
			c := app.Command(name)
			if vf := valueFlags(c.Flags); len(vf) > 0 {
				fmt.Fprintf(&b, "          %s) [[ $cmd == %s ]] && ((i++)) ;;\n", strings.Join(vf, " | "), name)
			}
		}
		b.WriteString("          -*) ;;\n          *) cmd=\"$cmd ${COMP_WORDS[i]}\"; break ;;\n        esac\n      done ;;\n  esac\n")
	}
	b.WriteString("  case $cmd in\n")
	b.WriteString("    \"\")\n")
	bashValueCase(&b, app.Flags, "      ")
	fmt.Fprintf(&b, "      flags=%q\n      args=commands ;;\n", flagWords(app.Flags))
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		fmt.Fprintf(&b, "    %s)\n", c.Name)
		bashValueCase(&b, c.Flags, "      ")
		args := commandArgs[c.Name]
		if subs := subcommandNames(c); subs != "" {
			args = argSubs
			fmt.Fprintf(&b, "      subs=%q\n", subs)
		}
		fmt.Fprintf(&b, "      flags=%q\n      args=%q ;;\n", flagWords(c.Flags), args)
		for _, sc := range subcommands(c) {
			name := c.Name + " " + sc.Name
			fmt.Fprintf(&b, "    %q)\n", name)
			bashValueCase(&b, sc.Flags, "      ")
			fmt.Fprintf(&b, "      flags=%q\n      args=%q ;;\n", flagWords(sc.Flags), commandArgs[name])
		}
	}
	fmt.Fprintf(&b, `  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
    return
  fi
  case $args in
    commands) COMPREPLY=($(compgen -W %q -- "$cur")) ;;
    shells) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
    subcommands) COMPREPLY=($(compgen -W "$subs" -- "$cur")) ;;
    files) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
    ?*) COMPREPLY=($(compgen -W "$(__stt_tun_names "$args" "${words[@]}" | sort -u)" -- "$cur")) ;;
  esac
}
complete -F _stt_tun stt-tun
`, strings.Join(commandNames(app), " "))
	_, err := io.WriteString(w, b.String())
	return err
}

// zshQuote escapes a description for an _arguments spec inside single quotes.
func zshQuote(s string) string {
	r := strings.NewReplacer("'", `'\''`, "[", `\[`, "]", `\]`, ":", `\:`)
	return r.Replace(s)
}

// zshFlagSpecs are the _arguments specs of flags, with --help.
func zshFlagSpecs(flags []cli.Flag) []string {
	var specs []string
	for _, f := range visibleFlags(flags) {
		names := f.Names()
		action := ""
		if flagTakesValue(f) {
			switch kind := flagValues[names[0]]; kind {
			case "files":
				action = ":file:_files"
			case "dirs":
				action = ":directory:_files -/"
			case argInterfaces:
				action = ":interface:->" + argInterfaces
			case argPeers:
				action = ":member:->" + argPeers
			case "":
				action = ":" + names[0] + ": "
			default:
				action = ":" + names[0] + ":(" + kind + ")"
			}
		}
		desc := zshQuote(flagUsage(f))
		if len(names) == 1 {
			specs = append(specs, fmt.Sprintf("'%s[%s]%s'", dashed(names[0]), desc, action))
			continue
		}
		var d []string
		for _, n := range names {
			d = append(d, dashed(n))
		}
		specs = append(specs, fmt.Sprintf("'(%s)'{%s}'[%s]%s'", strings.Join(d, " "), strings.Join(d, ","), desc, action))
	}
	return append(specs, "'(- *)'{-h,--help}'[show help]'")
}

// zshCommand writes the case arm of command c (path: "seed", "seed rotate"): its flags
// and argument, or its subcommands, each an arm of a nested case.
func zshCommand(b *strings.Builder, c *cli.Command, path, in string) {
	fmt.Fprintf(b, "%s%s)\n", in, c.Name)
	arg := ""
	subs := subcommands(c)
	switch kind := commandArgs[path]; {
	case len(subs) > 0:
		state := "sub-" + strings.ReplaceAll(path, " ", "-")
		arg = "'1:subcommand:(" + subcommandNames(c) + ")' '*::argument:->" + state + "'"
	case kind == "":
	case kind == argShells:
		arg = "'1:shell:(bash zsh)'"
	case kind == argFiles:
		arg = "'1:file:_files'"
	default:
		arg = fmt.Sprintf("'1:%s:->%s'", strings.TrimSuffix(kind, "s"), kind)
	}
	b.WriteString(in + "  _arguments -C \\\n")
	for _, s := range zshFlagSpecs(c.Flags) {
		fmt.Fprintf(b, "%s    %s \\\n", in, s)
	}
	if arg != "" {
		fmt.Fprintf(b, "%s    %s \\\n", in, arg)
	}
	if len(subs) == 0 {
		b.WriteString(in + "    && ret=0 ;;\n")
		return
	}
	b.WriteString(in + "    && ret=0\n")
	fmt.Fprintf(b, "%s  case $state in\n%s    sub-%s)\n", in, in, strings.ReplaceAll(path, " ", "-"))
	fmt.Fprintf(b, "%s      curcontext=${curcontext%%:*:*}:stt-tun-%s-$line[1]:\n", in, strings.ReplaceAll(path, " ", "-"))
	fmt.Fprintf(b, "%s      case $line[1] in\n", in)
	for _, sc := range subs {
		zshCommand(b, sc, path+" "+sc.Name, in+"        ")
	}
	fmt.Fprintf(b, "%s      esac ;;\n%s  esac ;;\n", in, in)
}

func writeZshCompletion(w io.Writer, app *cli.App) error {
	var b strings.Builder
	b.WriteString("#compdef stt-tun\n")
	b.WriteString("# zsh completion for stt-tun. Generated by `stt-tun completion zsh`; install it as\n")
	b.WriteString("# _stt-tun in a directory of $fpath, such as /usr/local/share/zsh/site-functions.\n")
	// The name functions run in zsh's sh emulation, where a glob that matches nothing
	// stays as written instead of failing.
	b.WriteString(strings.ReplaceAll(namesFunctionsFor(), "__stt_tun_", "__stt_tun_zsh_"))
	b.WriteString(`
__stt_tun_zsh_list() {
  emulate -L sh
  __stt_tun_zsh_names "$@"
}

_stt-tun() {
  local curcontext=$curcontext state line expl ret=1
  local -a names
  _arguments -C \
`)
	for _, s := range zshFlagSpecs(app.Flags) {
		fmt.Fprintf(&b, "    %s \\\n", s)
	}
	b.WriteString("    '1:command:->command' \\\n    '*::argument:->argument' && ret=0\n")
	b.WriteString("  case $state in\n    command)\n      local -a commands=(\n")
	for _, c := range app.Commands {
		if !c.Hidden {
			fmt.Fprintf(&b, "        '%s:%s'\n", c.Name, zshQuote(c.Usage))
		}
	}
	b.WriteString("      )\n      _describe -t commands 'stt-tun command' commands && ret=0 ;;\n")
	b.WriteString("    argument)\n      curcontext=${curcontext%:*:*}:stt-tun-$line[1]:\n      case $line[1] in\n")
	for _, c := range app.Commands {
		if !c.Hidden {
			zshCommand(&b, c, c.Name, "        ")
		}
	}
	b.WriteString(`      esac
      case $state in
        configs | interfaces | peers)
          names=(${(f)"$(__stt_tun_zsh_list $state "${words[@]}" | sort -u)"})
          _wanted $state expl ${state%s} compadd -a names && ret=0 ;;
      esac ;;
  esac
  return ret
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _stt-tun "$@"
else
  compdef _stt-tun stt-tun
fi
`)
	_, err := io.WriteString(w, b.String())
	return err
}
