// Package cli holds what the project's commands share about their command
// lines.
package cli

import "fmt"

// UsageError is a command-line error: the commands print it with a hint to
// -h and exit with status 2, as flag.ExitOnError does.
type UsageError string

func (e UsageError) Error() string { return string(e) }

// Usagef formats a UsageError.
func Usagef(format string, args ...any) error { return UsageError(fmt.Sprintf(format, args...)) }
