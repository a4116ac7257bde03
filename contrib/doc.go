// Package contrib holds no Go code: its tests check the files operators
// use to run the commands (contrib/systemd, the Containerfile at the root).
package contrib
