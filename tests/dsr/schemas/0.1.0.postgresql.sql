-- The ledger's schema as release 0.1.0 (commit c7316df) created it on postgresql: SQLModel's create_all,
-- no alembic_version. Frozen: the migrations' test builds a database of that release from it.

CREATE TABLE requests (
	request_id VARCHAR(100) NOT NULL,
	kind VARCHAR(32) NOT NULL,
	channel VARCHAR(32) NOT NULL,
	language VARCHAR(8) NOT NULL,
	received_at TIMESTAMP WITH TIME ZONE NOT NULL,
	deadline DATE NOT NULL,
	extended BOOLEAN NOT NULL,
	stage VARCHAR(32) NOT NULL,
	outcome VARCHAR(32),
	subject_email_sealed TEXT NOT NULL,
	subject_name_sealed TEXT NOT NULL,
	subject_index VARCHAR(128) NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (request_id)
);

CREATE INDEX ix_requests_subject_index ON requests (subject_index);

CREATE INDEX ix_requests_stage ON requests (stage);

CREATE TABLE event_notes (
	event_key VARCHAR(400) NOT NULL,
	note_sealed TEXT NOT NULL,
	PRIMARY KEY (event_key)
);

CREATE TABLE subject_claims (
	subject_index VARCHAR(128) NOT NULL,
	kind VARCHAR(32) NOT NULL,
	request_id VARCHAR(100) NOT NULL,
	claimed_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (subject_index, kind)
);

CREATE TABLE triage_dismissals (
	triage_id VARCHAR(100) NOT NULL,
	received_at TIMESTAMP WITH TIME ZONE NOT NULL,
	deadline DATE NOT NULL,
	classifier_reason TEXT NOT NULL,
	reason_sealed TEXT NOT NULL,
	decided_by TEXT NOT NULL,
	attachments_deleted INTEGER NOT NULL,
	dismissed_at TIMESTAMP WITH TIME ZONE NOT NULL,
	refused_as VARCHAR(32) NOT NULL,
	ground VARCHAR(32) NOT NULL,
	PRIMARY KEY (triage_id)
);

CREATE TABLE rate_limits (
	key VARCHAR(200) NOT NULL,
	hits TEXT NOT NULL,
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (key)
);

CREATE INDEX ix_rate_limits_expires_at ON rate_limits (expires_at);

CREATE TABLE attempt_limits (
	key VARCHAR(200) NOT NULL,
	failures INTEGER NOT NULL,
	first_failed TIMESTAMP WITH TIME ZONE,
	locked_until TIMESTAMP WITH TIME ZONE,
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (key)
);

CREATE INDEX ix_attempt_limits_expires_at ON attempt_limits (expires_at);

CREATE TABLE seen_signatures (
	key VARCHAR(100) NOT NULL,
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (key)
);

CREATE INDEX ix_seen_signatures_expires_at ON seen_signatures (expires_at);

CREATE TABLE answer_caps (
	key VARCHAR(200) NOT NULL,
	wrong INTEGER NOT NULL,
	closed_at TIMESTAMP WITH TIME ZONE,
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (key)
);

CREATE INDEX ix_answer_caps_expires_at ON answer_caps (expires_at);

CREATE TABLE inbound_messages (
	message_key VARCHAR(64) NOT NULL,
	request_id VARCHAR(100) NOT NULL,
	state VARCHAR(16) NOT NULL,
	outcome VARCHAR(16),
	reference VARCHAR(100),
	reason VARCHAR(64),
	attachments_stored BOOLEAN NOT NULL,
	received_at TIMESTAMP WITH TIME ZONE NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (message_key)
);

CREATE INDEX ix_inbound_messages_request_id ON inbound_messages (request_id);

CREATE TABLE events (
	id SERIAL NOT NULL,
	event_key TEXT NOT NULL,
	request_id VARCHAR(100) NOT NULL,
	at TIMESTAMP WITH TIME ZONE NOT NULL,
	event VARCHAR(64) NOT NULL,
	actor TEXT NOT NULL,
	details TEXT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (event_key),
	FOREIGN KEY(request_id) REFERENCES requests (request_id)
);

CREATE INDEX ix_events_request_id ON events (request_id);
