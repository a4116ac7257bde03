// Package cli holds the conventions the project's commands share: flags
// that environment variables can also set, -version, the log flags, exit
// statuses, the form of error messages and the shutdown on signals.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/teredo-go/teredo/internal/metrics"
)

// Exit statuses of every command.
const (
	ExitOK      = 0
	ExitFailure = 1 // could not start, or stopped on an error
	ExitUsage   = 2 // bad flags, arguments or environment variables, as flag.ExitOnError
)

// ShutdownGrace is how long a command lets open requests (status pages,
// SOCKS sessions) finish after SIGINT or SIGTERM before it closes them.
const ShutdownGrace = 5 * time.Second

// UsageError is a command-line error: Exit prints it with a hint to -h
// and returns ExitUsage.
type UsageError string

func (e UsageError) Error() string { return string(e) }

// Usagef formats a UsageError.
func Usagef(format string, args ...any) error { return UsageError(fmt.Sprintf(format, args...)) }

// EnvName is the environment variable that sets flag name of command cmd:
// TEREDO_SERVER_ANY_IPV4 for teredo-server -any-ipv4.
func EnvName(cmd, name string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(cmd + "_" + name))
}

// EnvPrefix is what every environment variable of cmd starts with.
func EnvPrefix(cmd string) string { return EnvName(cmd, "") }

// SetFromEnv sets each flag of fs whose environment variable (EnvName of
// fs.Name()) is not empty, so that flags parsed afterwards win.
func SetFromEnv(fs *flag.FlagSet, getenv func(string) string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := EnvName(fs.Name(), f.Name)
		if v := getenv(name); v != "" && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = Usagef("environment variable %s: %v", name, e)
			}
		}
	})
	return err
}

// ParseArgs parses args with fs, which must be flag.ContinueOnError. The
// flag package's own messages are kept for -h: errors come back as
// UsageErrors for Exit to print in the common form, and positional
// arguments are refused.
func ParseArgs(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return err
	case err != nil:
		return UsageError(err.Error())
	case fs.NArg() > 0:
		return Usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// Parse sets fs from the environment, then from args.
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	if err := SetFromEnv(fs, getenv); err != nil {
		return err
	}
	return ParseArgs(fs, args)
}

// Exit prints err in the form every command uses and returns the exit
// status: ExitOK for nil and flag.ErrHelp (the usage is printed already),
// ExitUsage with a hint to -h for a UsageError, ExitFailure otherwise.
func Exit(stderr io.Writer, cmd string, err error) int {
	var ue UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %v\nRun '%s -h' for the flags.\n", cmd, err, cmd)
		return ExitUsage
	}
	fmt.Fprintf(stderr, "%s: %v\n", cmd, err)
	return ExitFailure
}

// Common are the flags every command has.
type Common struct {
	Version   bool   // -version: print Version and exit
	Verbose   bool   // -v: same as -log-level debug
	LogFormat string // -log-format: text or json
	LogLevel  string // -log-level: debug, info, warn or error
}

// DefaultLogLevel is the log level of every command: starts, stops and
// state changes, not every packet or session.
const DefaultLogLevel = "info"

// Register defines the common flags in fs.
func (c *Common) Register(fs *flag.FlagSet) {
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	fs.BoolVar(&c.Verbose, "v", false, "debug logging (-log-level debug)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log `format` on standard error: text or json")
	fs.StringVar(&c.LogLevel, "log-level", DefaultLogLevel, "log `level`: debug, info, warn or error")
}

// Check validates the common flags' values.
func (c *Common) Check() error {
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return Usagef("-log-format %q: want text or json", c.LogFormat)
	}
	if _, err := c.level(); err != nil {
		return err
	}
	return nil
}

func (c *Common) level() (slog.Level, error) {
	if c.Verbose {
		return slog.LevelDebug, nil
	}
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, Usagef("-log-level %q: want debug, info, warn or error", c.LogLevel)
}

// Logger returns the logger the flags ask for, writing to w. Call Check
// first: values Check refuses give text at the default level.
func (c *Common) Logger(w io.Writer) *slog.Logger {
	level, _ := c.level()
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Version is what -version prints: the command, the module version and
// the VCS revision it was built from, and the Go version, as
// "teredo-server v1.2.0 (rev 0123abc, go1.26.3)".
func Version(cmd string) string { return cmd + " " + metrics.Build().String() }

// SignalContext returns a context canceled by the first SIGINT or
// SIGTERM; a second one kills the process at once, should the graceful
// shutdown hang.
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // restores the default action
	return ctx, stop
}
