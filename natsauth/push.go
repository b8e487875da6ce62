package natsauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
// nc (a system account user, creds/sys.creds) reaches, and waits for each
// to be stored. Every server of a cluster takes the update; Push returns
// once one has answered, and fails if any answer within settle is a
// refusal.
func Push(ctx context.Context, nc *nats.Conn, jwts ...string) error {
	for _, j := range jwts {
		ac, err := jwt.DecodeAccountClaims(j)
		if err != nil {
			return fmt.Errorf("push: %w", err)
		}
		if err := pushOne(ctx, nc, j, ac.Name); err != nil {
			return err
		}
	}
	return nil
}

// settle is how long Push collects further servers' answers after the first.
const settle = 200 * time.Millisecond

func pushOne(ctx context.Context, nc *nats.Conn, accountJWT, name string) error {
	inbox := nc.NewRespInbox()
	replies := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(inbox, replies)
	if err != nil {
		return fmt.Errorf("push account %s: %w", name, err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(ClaimsUpdateSubject, inbox, []byte(accountJWT)); err != nil {
		return fmt.Errorf("push account %s: %w", name, err)
	}
	var stored int
	var deadline <-chan time.Time
	for {
		select {
		case m := <-replies:
			var r claimsReply
			if err := json.Unmarshal(m.Data, &r); err != nil {
				return fmt.Errorf("push account %s: unreadable answer %q: %w", name, m.Data, err)
			}
			if r.Error != nil {
				return fmt.Errorf("push account %s: server %s: %s: %w", name, r.Server.Name, r.Error.Description, ErrPushRefused)
			}
			stored++
			if deadline == nil {
				deadline = time.After(settle)
			}
		case <-deadline:
			return nil
		case <-ctx.Done():
			if stored > 0 {
				return nil
			}
			return fmt.Errorf("push account %s: no NATS server answered on %s (is the resolver full or cache, and are these system account credentials?): %w", name, ClaimsUpdateSubject, ctx.Err())
		}
	}
}
