-- A small bookshop: books with a publisher, authors through a join table, subjects and ratings.
CREATE TABLE publisher (id serial PRIMARY KEY, name text NOT NULL, country text);
CREATE TABLE author (id serial PRIMARY KEY, name text NOT NULL, born date);
CREATE TABLE subject (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE book (
  id serial PRIMARY KEY,
  isbn text UNIQUE NOT NULL,
  title text NOT NULL,
  price numeric(8,2),
  published_at timestamp,
  tags text[],
  details jsonb,
  publisher_id int NOT NULL REFERENCES publisher(id)
);
CREATE TABLE book_author (book_id int REFERENCES book(id) ON DELETE CASCADE, author_id int REFERENCES author(id) ON DELETE CASCADE, PRIMARY KEY (book_id, author_id));
CREATE TABLE book_subject (id serial PRIMARY KEY, book_id int NOT NULL REFERENCES book(id) ON DELETE CASCADE, subject_id int NOT NULL REFERENCES subject(id) ON DELETE CASCADE);
CREATE TABLE rating (id serial PRIMARY KEY, book_id int NOT NULL REFERENCES book(id) ON DELETE CASCADE, stars int NOT NULL, comment text);
CREATE INDEX ON book_subject (book_id);
CREATE INDEX ON rating (book_id);
CREATE INDEX ON book_author (author_id);

INSERT INTO publisher (name, country) VALUES ('Penguin', 'UK'), ('Gallimard', 'FR'), ('Tor', 'US');
INSERT INTO author (name, born) VALUES ('Ursula K. Le Guin', '1929-10-21'), ('Albert Camus', '1913-11-07'),
  ('Terry Pratchett', '1948-04-28'), ('Neil Gaiman', '1960-11-10');
INSERT INTO subject (name) VALUES ('Fantasy'), ('Philosophy'), ('Humour'), ('Science fiction');
INSERT INTO book (isbn, title, price, published_at, tags, details, publisher_id) VALUES
  ('978-0', 'A Wizard of Earthsea', 9.99, '1968-11-01 00:00', '{classic,magic}', '{"pages": 183, "format": "paperback"}', 1),
  ('978-1', 'L''Étranger', 7.50, '1942-05-19 00:00', '{classic}', '{"pages": 159, "format": "poche"}', 2),
  ('978-2', 'Good Omens', 12.00, '1990-05-01 00:00', '{comedy}', '{"pages": 288}', 3),
  ('978-3', 'The Left Hand of Darkness', 10.50, '1969-03-01 00:00', NULL, NULL, 1);
INSERT INTO book_author VALUES (1, 1), (2, 2), (3, 3), (3, 4), (4, 1);
INSERT INTO book_subject (book_id, subject_id) VALUES (1, 1), (2, 2), (3, 1), (3, 3), (4, 4);
INSERT INTO rating (book_id, stars, comment) VALUES (1, 5, 'timeless'), (2, 4, NULL), (3, 5, 'hilarious'), (3, 4, NULL);
