// Package logging builds the JSON logger both programs use.
package logging

import (
	"fmt"
	"os"

	"github.com/sirupsen/logrus"
)

// New returns a logrus logger writing JSON to stderr at level.
func New(level string) (*logrus.Logger, error) {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: "2006-01-02T15:04:05.000Z07:00"})
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	l.SetLevel(lvl)
	return l, nil
}
