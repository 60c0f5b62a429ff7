package main

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/urfave/cli/v2"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "API tokens: who may read, operate or administer the cluster; join tokens for new hosts",
		Description: "Scopes: read (every read), operator (and guest, network and node work), admin (and\n" +
			"tokens), join (only a new host's credentials, for dvmd join). The cluster keeps a\n" +
			"token's name, scope and the hash of its secret; the secret is shown once, when it is\n" +
			"made. Managing tokens needs an admin token, such as the one the first management node\n" +
			"made at its first start (DATA_DIR/token, named bootstrap).",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "make a token and show its secret, once",
				ArgsUsage: "NAME",
				Description: "--ttl takes a duration (90m, 12h) or days (30d), from 1m to 3650d; without it a\n" +
					"token lasts until revoked, a join token 24h.\n\n" +
					"Examples:\n  vmctl token create ci --scope read\n  vmctl token create alice --scope operator --ttl 90d\n" +
					"  vmctl token create rack4 --scope join --ttl 2h",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "scope", Required: true, Usage: "`SCOPE`: " + strings.Join(api.Scopes, ", ")},
					&cli.StringFlag{Name: "ttl", Usage: "how long the token lasts, `D` such as 12h or 30d"},
				},
				Action: tokenCreate,
			},
			{
				Name: "ls", Aliases: []string{"list"}, Usage: "list tokens (never their secrets)",
				Description: "Examples:\n  vmctl token ls\n  vmctl token ls -o json",
				Action:      tokenList,
			},
			{
				Name: "revoke", Usage: "revoke a token: its secret is refused from now on", ArgsUsage: "NAME",
				Description: "The last active admin token cannot be revoked: make another first.\n\nExample:\n  vmctl token revoke ci",
				Action:      tokenRevoke,
			},
		},
	}
}

func tokenCreate(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	req := api.CreateToken{Name: name, Scope: c.String("scope"), TTL: c.String("ttl")}
	// Checked here too, so a bad flag fails before any request is sent.
	check := req
	if _, fe := check.Normalize(); fe != nil {
		return flagError(fe)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	var t api.TokenCreated
	if err := cl.Do(c.Context, "POST", "/v1/tokens", req, &t); err != nil {
		return err
	}
	if t.Warning != "" {
		fmt.Fprintln(c.App.ErrWriter, "warning:", t.Warning)
	}
	if jsonOut(c) {
		return printJSON(c, t)
	}
	w := c.App.Writer
	lasts := "it lasts until revoked"
	if !t.ExpiresAt.IsZero() {
		lasts = "it expires " + t.ExpiresAt.Local().Format(time.RFC3339)
	}
	if t.Scope == api.ScopeJoin {
		fmt.Fprintf(w, "join token %s made; %s. On the new host, as root:\n  dvmd join %s\n"+
			"(shown only now: the cluster keeps only a hash of it)\n", t.Name, lasts, t.Secret)
		return nil
	}
	fmt.Fprintf(w, "token %s made, scope %s; %s. Its secret, shown only now (the cluster keeps only a hash of it):\n  %s\n"+
		"Use it with: export DVM_TOKEN=%s\n", t.Name, t.Scope, lasts, t.Secret, t.Secret)
	return nil
}

func tokenList(c *cli.Context) error {
	when := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format(time.RFC3339)
	}
	return list(c, "/v1/tokens", "NAME\tSCOPE\tSTATE\tCREATED\tBY\tEXPIRES", func(t api.Token) []string {
		return []string{t.Name, t.Scope, t.State, when(t.CreatedAt), orDash(t.CreatedBy), when(t.ExpiresAt)}
	})
}

func tokenRevoke(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	if fe := api.ValidateName("name", name); fe != nil {
		return fmt.Errorf("NAME: %s", fe.Msg)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	if err := cl.Do(c.Context, "DELETE", "/v1/tokens/"+url.PathEscape(name), nil, nil); err != nil {
		return err
	}
	if !jsonOut(c) {
		fmt.Fprintf(c.App.Writer, "token %s revoked\n", name)
	}
	return nil
}
