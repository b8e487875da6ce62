package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// Provision a volume and wait for it.
func Example() {
	ctx := context.Background()
	c, err := client.New(client.WithBaseURL("http://127.0.0.1:8080"), client.WithToken("pvt1.…"))
	if err != nil {
		log.Fatal(err)
	}
	size := int64(2)
	sub, err := c.Submit(ctx, rest.JobRequest{
		ImageURL:     "http://127.0.0.1:9000/images/demo/go-src-ext4.qcow2",
		VolumeName:   "vm-1-root",
		VolumeSizeGB: &size,
		Hypervisor:   "local",
	})
	if err != nil {
		log.Fatal(err)
	}
	job, err := c.Wait(ctx, sub.JobID)
	if errors.Is(err, client.ErrJobFailed) {
		log.Fatalf("provisioning failed: %s", job.Error)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(job.VolumePath)
}

// Follow a job's progress as it happens.
func ExampleClient_Watch() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := client.New(client.WithBaseURL("http://127.0.0.1:8080"))
	if err != nil {
		log.Fatal(err)
	}
	for ev, err := range c.Watch(ctx, "550e8400-e29b-41d4-a716-446655440000") {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s %s %d%% %d/%d bytes\n", ev.Status, ev.Stage, ev.Percent, ev.Bytes, ev.Total)
	}
}

// A client that mints its own short-lived tokens from a token secret and
// retries a little longer than the default.
func ExampleWithTokenSecret() {
	c, err := client.New(
		client.WithBaseURL("https://provisioner.example.com:8443"),
		client.WithTokenSecret("ops", "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==", "deployer"),
		client.WithRetryPolicy(client.RetryPolicy{Attempts: 8, MinBackoff: 500 * time.Millisecond, MaxBackoff: 10 * time.Second}),
	)
	if err != nil {
		log.Fatal(err)
	}
	hosts, err := c.Hosts(context.Background())
	var apiErr *client.APIError
	switch {
	case errors.Is(err, client.ErrUnauthorized):
		log.Fatal("the token was refused: check the secret and its key id")
	case errors.As(err, &apiErr):
		log.Fatalf("%d %s", apiErr.Status, apiErr.Body.Message)
	case err != nil:
		log.Fatal(err)
	}
	for _, h := range hosts {
		fmt.Println(h.Name, h.Alive)
	}
}
