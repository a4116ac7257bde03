// Command teredo-socks is a SOCKS5 proxy that gives every program on the
// machine IPv6 through a user-space Teredo client, with no privileges.
//
// IPv6 destinations go through Teredo, or through the host's own IPv6
// when it has a global route (-ipv6 auto, the default); IPv4 ones straight
// through the host (or are refused with -ipv4 reject); names with both
// kinds of records are raced Happy-Eyeballs style, IPv4 first unless
// -prefer ipv6. It serves at once and keeps qualifying with the Teredo
// servers until it is stopped. Try it with no network and no root:
//
//	go run ./cmd/teredo-socks -demo
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/teredo-go/teredo/internal/cli"
	"github.com/teredo-go/teredo/internal/socksd"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func realMain(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			err = cli.UsageError(err.Error()) // every configuration error is the user's to fix
		}
		return cli.Exit(stderr, name, err)
	}
	if cfg.Version {
		fmt.Fprintln(stdout, cli.Version(name))
		return cli.ExitOK
	}
	// The lines a user needs go to stdout; the log (stderr) is for the
	// service manager's journal.
	log := cfg.Logger(stderr)
	ctx, stop := cli.SignalContext()
	defer stop()

	e := socksd.HostEnv(stdout, stderr, log)
	e.Servers = strings.Join(cfg.Servers, ", ")
	if cfg.Demo {
		e.Servers = "the demo's in-process server"
		e.Start = demoStarter(cfg, log)
		e.Lookup = demoLookup(e.Lookup)
		e.Hint = demoHint
		// The demo's IPv6 hosts live in its own internet only.
		e.NativeIPv6 = nil
	} else {
		e.Start = socksd.RealStarter(&cfg.Config, log, e.Lookup)
	}
	return socksd.Run(ctx, &cfg.Config, e)
}
