package natsauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
)

// ClaimsUpdateSubject is where nats-server's full and cache resolvers take
// account JWTs from the system account at run time.
const ClaimsUpdateSubject = "$SYS.REQ.CLAIMS.UPDATE"

// ErrPushRefused is returned when a server refused an account JWT.
var ErrPushRefused = errors.New("the NATS server refused the account JWT")

// claimsReply is a server's answer to a claims update.
type claimsReply struct {
	Server struct {
		Name string `json:"name"`
	} `json:"server"`
	Data *struct {
		Account string `json:"account"`
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"data"`
	Error *struct {
		Account     string `json:"account"`
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// Push sends each account JWT, in order, to the resolvers of the servers
// nc (a system account user, creds/sys.creds) reaches: each is sent once
// a server has stored the one before. Every server of a cluster takes each
// update; Push fails if any answer, up to settle after the last, is a
// refusal.
func Push(ctx context.Context, nc *nats.Conn, jwts ...string) error {
	inbox := nc.NewRespInbox()
	replies := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox+".*", replies)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	defer sub.Unsubscribe()
	names := make([]string, len(jwts))
	stored := make([]bool, len(jwts))
	for i, j := range jwts {
		ac, err := jwt.DecodeAccountClaims(j)
		if err != nil {
			return fmt.Errorf("push: %w", err)
		}
		names[i] = ac.Name
		if err := nc.PublishRequest(ClaimsUpdateSubject, fmt.Sprintf("%s.%d", inbox, i), []byte(j)); err != nil {
			return fmt.Errorf("push account %s: %w", ac.Name, err)
		}
		for !stored[i] {
			if err := awaitAnswer(ctx, replies, nil, names, stored); err != nil {
				return err
			}
		}
	}
	deadline := time.After(settle)
	for {
		if err := awaitAnswer(ctx, replies, deadline, names, stored); errors.Is(err, errSettled) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// settle is how long Push collects further servers' answers after the last
// JWT was stored by one.
const settle = 200 * time.Millisecond

var errSettled = errors.New("settled")

// awaitAnswer takes one server's answer to request i (the reply subject's
// last token) and marks names[i] stored, or returns why not: a refusal,
// the context's end with a JWT not stored, or errSettled when deadline
// passes or the context ends after every JWT was stored.
func awaitAnswer(ctx context.Context, replies <-chan *nats.Msg, deadline <-chan time.Time, names []string, stored []bool) error {
	select {
	case m := <-replies:
		i, err := strconv.Atoi(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
		if err != nil || i < 0 || i >= len(names) {
			return fmt.Errorf("push: answer on unexpected subject %s", m.Subject)
		}
		var r claimsReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return fmt.Errorf("push account %s: unreadable answer %q: %w", names[i], m.Data, err)
		}
		if r.Error != nil {
			return fmt.Errorf("push account %s: server %s: %s: %w", names[i], r.Server.Name, r.Error.Description, ErrPushRefused)
		}
		stored[i] = true
		return nil
	case <-deadline:
		return errSettled
	case <-ctx.Done():
		for i, ok := range stored {
			if !ok {
				return fmt.Errorf("push account %s: no NATS server answered on %s (is the resolver full or cache, and are these system account credentials?): %w", names[i], ClaimsUpdateSubject, ctx.Err())
			}
		}
		return errSettled
	}
}
